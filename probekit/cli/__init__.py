"""`probekit …` subcommands. Each lives in its own module under `probekit/cli/` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the function that runs it.

Every command checks its ``--out`` folder and the capture cache before loading a model and writes through
a temporary sibling (`probekit.report.outdir`); layers are numbered one way everywhere (``docs/layers.md``:
layer L = block L; residual-stream layer L = the stream entering block L, 0 = embeddings). A user error
exits 2 with one message (`ProbekitError`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from probekit.errors import ProbekitError

# module names under probekit.cli, in the order `probekit --help` lists them
SUBCOMMANDS = [
    "models",
    "capture",
    "cache",
    "run",
    "heads",
    "probe",
    "sweep",
    "bench",
    "score",
    "ablate",
    "mediate",
    "trees",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probekit", description="Test claims about attention heads and representations, with baselines."
    )
    from probekit import __version__

    parser.add_argument("--version", action="version", version=f"probekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"probekit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ProbekitError as err:
        print(f"probekit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
