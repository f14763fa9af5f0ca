"""`probekit bench`: performance benchmarks (capture, memory scaling, ablation sweep, probes, end to end).

    probekit bench --out results/benchmarks            # the full run (tens of minutes)
    probekit bench --quick --out /tmp/bench            # tiny models, a few sentences: checks the harness
    probekit bench --only capture,probes --repeats 2

Writes ``OUT/benchmarks.csv`` (tidy, one row per measurement) and ``OUT/benchmarks.md`` (a table per
benchmark, the machine, and what the numbers mean), plus ``OUT/profiles/``. How things are measured:
``docs/methods/benchmarks.md``; the harness is `probekit.bench`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    # No import of probekit.bench here: every command builds this parser, and a run's manifest hashes
    # every probekit module imported, so the harness's code would otherwise make every run folder stale.
    p = sub.add_parser(
        "bench",
        help="run the performance benchmarks",
        description="Time probekit against the bare forward pass and scikit-learn, measure peak "
        "memory in fresh processes, and write benchmarks.csv and benchmarks.md.",
    )
    p.add_argument("--out", default="results/benchmarks", help="output folder (default: results/benchmarks)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny models, a few sentences, 1 repetition (seconds; checks the outputs, not speed)",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of the benchmarks (capture, memory, ...; an unknown name lists them)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 3; 1 with --quick)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch/BLAS threads, set explicitly and recorded (default 1)"
    )
    p.add_argument(
        "--manifest",
        default="results/seed_claims/manifest.json",
        help="run manifest for the end-to-end breakdown (default: results/seed_claims/manifest.json)",
    )
    p.add_argument(
        "--data", default=None, help="sentence source spec (default: EWT dev if present, else templates)"
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rebuild OUT/benchmarks.md from OUT/benchmarks.csv (and OUT/profiles, OUT/notes); run nothing",
    )
    p.add_argument(
        "--benchmarks-dir",
        default=None,
        help="folder of bench_*.py modules (default: the repo's benchmarks/)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from probekit.bench import BenchContext, default_benchmarks_dir, run_all
    from probekit.errors import ProbekitError

    folder = Path(args.benchmarks_dir) if args.benchmarks_dir else default_benchmarks_dir()
    if not folder.is_dir():
        raise ProbekitError(
            f"no benchmarks folder at {folder}",
            fix="run from a source checkout (pip install -e .) or pass --benchmarks-dir",
        )
    if args.repeats is not None and args.repeats < 1:
        raise ProbekitError(f"--repeats must be at least 1, not {args.repeats}")
    if args.threads < 1:
        raise ProbekitError(f"--threads must be at least 1, not {args.threads}")
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    from probekit.report.outdir import check_writable

    check_writable(args.out)  # before any benchmark runs (the harness writes OUT/ in place, table by table)
    ctx = BenchContext(
        quick=args.quick,
        out=Path(args.out),
        repeats=args.repeats,
        threads=args.threads,
        manifest=Path(args.manifest),
        data=args.data,
    )
    if args.render_only:
        from probekit.bench import render_only

        print(f"wrote {render_only(ctx, folder)}")
        return 0
    csv_path, md_path, failed = run_all(ctx, only=only, folder=folder)
    print(f"wrote {csv_path} and {md_path}")
    if failed:
        print(
            f"probekit bench: {len(failed)} benchmark(s) failed: {', '.join(failed)} (see {md_path})",
            file=sys.stderr,
        )
        return 1
    return 0
