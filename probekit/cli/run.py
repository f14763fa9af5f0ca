"""`probekit run CONFIG.yaml [--out DIR] [--set key=value ...]` and `probekit report DIR...`.

    probekit run experiments/seed_claims.yaml
    probekit run experiments/seed_claims.yaml --out runs/quick --set analyses.heads.max_sentences=50
    probekit report results/seed_claims
    probekit report results/seed_claims --html
    probekit report runs/a runs/b --out runs/comparison.md

Both print the files they wrote; the work is `probekit.experiment.run_experiment` and
`probekit.experiment.verdicts.build_report`.
"""

from __future__ import annotations

from probekit.cli.common import add_backend_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run an experiment config (YAML)",
        description="Run every analysis of an experiment config; finished stages are reused.",
    )
    p.add_argument("config", help="path to a YAML config, e.g. experiments/seed_claims.yaml")
    p.add_argument("--out", default=None, help="output folder (default: the config's `out`)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set analyses.heads.max_sentences=50 (repeatable)",
    )
    add_backend_arguments(p)
    p.set_defaults(func=run)

    r = sub.add_parser(
        "report",
        help="rebuild REPORT.md from a run's CSVs, or compare runs",
        description="Rebuild REPORT.md of one run folder from its CSV tables; with several "
        "folders, also write one comparison table across them.",
    )
    r.add_argument("runs", nargs="+", help="run folders")
    r.add_argument("--out", default=None, help="comparison Markdown file (several runs)")
    r.add_argument(
        "--html", action="store_true", help="also rebuild REPORT.html (the self-contained page) of each run"
    )
    r.set_defaults(func=report)


def run(args) -> int:
    from functools import partial

    from probekit.cli.common import backend_session, check_backend, sharded_options
    from probekit.experiment.run import run_experiment

    parallel = None
    if args.backend == "ray":  # the heads and probes stages shard their corpora over Ray workers
        from probekit.parallel import sharded_model

        check_backend(args)
        parallel = partial(sharded_model, options=sharded_options(args), shard_size=args.shard_size)
    with backend_session(args):
        out = run_experiment(args.config, out=args.out, overrides=args.overrides, parallel=parallel)
    print(f"wrote {out}/REPORT.md")
    return 0


def report(args) -> int:
    from pathlib import Path

    from probekit.errors import ProbekitError
    from probekit.experiment.verdicts import CLAIMS, build_report
    from probekit.report import compare_runs
    from probekit.report.html import write_html_report
    from probekit.report.outdir import check_writable

    if len(args.runs) > 1 or args.out:  # before any report is rebuilt
        out = Path(args.out or "comparison.md")
        if out.is_dir():
            raise ProbekitError(f"--out {out} is a folder; it names the comparison Markdown file")
        check_writable(out.parent, what=f"the folder of --out {out}")
    for folder in args.runs:
        print(f"wrote {build_report(Path(folder))}")
        if args.html:
            print(f"wrote {write_html_report(Path(folder), CLAIMS)}")
    if len(args.runs) > 1 or args.out:
        out = Path(args.out or "comparison.md")
        compare_runs([Path(f) for f in args.runs], out)
        print(f"wrote {out}")
    return 0
