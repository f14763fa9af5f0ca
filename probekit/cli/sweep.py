"""`probekit sweep FILE.sweep.yaml [--backend local|ray] ...`: run an experiment over a grid of values.

    probekit sweep experiments/tiny.sweep.yaml                       # serial, this process
    probekit sweep experiments/tiny.sweep.yaml --backend ray         # Ray on this machine
    probekit sweep experiments/smoke.sweep.yaml --backend ray --gpus-per-task 0.5
    probekit sweep experiments/smoke.sweep.yaml --backend ray --address auto   # join `ray start --head`
    probekit sweep experiments/tiny.sweep.yaml --dry-run             # list the runs, run nothing

Finished runs are skipped, so the same command resumes an interrupted sweep. The exit status is 1 when
a run failed (its error is in sweep.md), 0 otherwise.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run an experiment over a grid of values (local or Ray)",
        description="Expand a sweep file's grid into runs, run the unfinished ones, and write "
        "sweep.csv + sweep.md comparing them.",
    )
    p.add_argument("sweep", help="path to a sweep file, e.g. experiments/tiny.sweep.yaml")
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: one run after the other in this process; ray: one actor per model",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto, HOST:6379 or ray://HOST:10001 (default: start Ray here)",
    )
    p.add_argument(
        "--gpus-per-task",
        type=float,
        default=0.0,
        metavar="X",
        help="GPUs per Ray actor; a fraction (0.5) shares a GPU between actors",
    )
    p.add_argument(
        "--cpus-per-task",
        type=float,
        default=None,
        metavar="X",
        help="CPUs per Ray actor (default 1) and torch threads per run on both backends; use the "
        "same value to get byte-identical tables from both",
    )
    p.add_argument(
        "--actors-per-model",
        type=int,
        default=1,
        metavar="N",
        help="Ray actors per model group, each loading the weights once",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=1,
        metavar="N",
        help="extra attempts for a run that raised (user errors are not retried)",
    )
    p.add_argument("--out", default=None, help="sweep folder (default: the sweep file's `out`)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are finished")
    p.set_defaults(func=run)


def run(args) -> int:
    from probekit.experiment.sweep import is_finished, load_sweep, run_sweep

    sweep = load_sweep(args.sweep, out=args.out)
    if not args.dry_run:  # before any run starts: the sweep folder and the capture cache must be writable
        from probekit.cli.common import check_outputs

        check_outputs(sweep.out, what="--out" if args.out else "the sweep file's out")
    if args.dry_run:
        for r in sweep.runs:
            print(f"{'finished' if is_finished(r) else 'to run  '}  {r.name}  ->  {r.folder}")
        print(f"{len(sweep.runs)} runs in {sweep.out}")
        return 0
    result = run_sweep(
        sweep,
        backend=args.backend,
        address=args.address,
        gpus_per_task=args.gpus_per_task,
        cpus_per_task=args.cpus_per_task,
        actors_per_model=args.actors_per_model,
        max_retries=args.max_retries,
        progress=args.progress,
    )
    print(
        f"sweep {sweep.name}: {len(result.results)} runs, {len(result.ran)} ran, {len(result.reused)} "
        f"reused, {len(result.failed)} failed"
    )
    for res in result.results:
        if res.status != "ok":
            print(f"  failed: {res.name}: {res.error}")
    print(f"wrote {result.table} and {result.table.with_suffix('.md')}")
    return 1 if result.failed else 0
