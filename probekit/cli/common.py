"""What the subcommands share: checking output folders and values before any work.

Not a subcommand (it is not in `probekit.cli.SUBCOMMANDS`). Layer numbering: ``docs/layers.md``.
"""

from __future__ import annotations

import os

from probekit.errors import ProbekitError


def check_outputs(out: str | os.PathLike | None, *, what: str = "--out") -> None:
    """Before loading a model: ``out`` (if given) and the capture cache must be creatable and writable."""
    from probekit.activations.cache import default_cache_dir
    from probekit.report.outdir import check_writable

    if out is not None:
        check_writable(out, what=what)
    check_writable(default_cache_dir(), what="the capture cache (PROBEKIT_CACHE)")


def positive(args, *names: str) -> None:
    """Each named option, when given, must be at least 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise ProbekitError(f"{flag} must be at least 1, not {value}", fix=f"pass {flag} 1 or more")


def parse_layers(values: list[str]) -> list[int] | None:
    """``--layers`` values (``all``, or integers, space- or comma-separated) to a list, None for 'all'.

    Only the syntax is checked here, before any model is loaded; `check_layers` checks the range."""
    items = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
    if items == ["all"]:
        return None
    try:
        layers = [int(x) for x in items]
    except ValueError:
        raise ProbekitError(
            f"--layers takes 'all' or integers, got {' '.join(items) or 'nothing'!r}",
            fix="e.g. --layers 0,1 or --layers all (numbering: docs/layers.md)",
        ) from None
    if not layers:
        raise ProbekitError("--layers is empty", fix="e.g. --layers 0,1 or --layers all")
    return layers


def check_layers(layers: list[int] | None, model, *, residual: bool) -> list[int] | None:
    """Check ``layers`` against the model: one numbering for every command (``docs/layers.md``).

    Layer L is transformer block L (0-based); residual-stream layer L is the stream entering block L
    (0 = embeddings, n_layers = the final output). ``residual=False``: attention layers 0..n_layers-1;
    ``residual=True``: stream layers 0..n_layers.
    """
    if layers is None:
        return None
    top = model.n_layers if residual else model.n_layers - 1
    kind = "residual-stream layers" if residual else "layers (blocks)"
    bad = [x for x in layers if not 0 <= x <= top]
    if bad:
        raise ProbekitError(
            f"--layers {' '.join(map(str, bad))} out of range: {model.name} has {kind} 0..{top}",
            fix=f"use {kind} 0..{top} (numbering: docs/layers.md)",
        )
    return layers


def add_backend_arguments(p) -> None:
    """``--backend local|ray`` and the Ray options of the data-parallel commands (`probekit.parallel`)."""
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local (one process, default) or ray: the corpus is split into shards that Ray workers "
        "capture (and, for heads, reduce); same tables at the same torch thread count (docs/scale-out.md)",
    )
    p.add_argument("--workers", type=int, default=2, help="Ray workers, each loads the model once (ray)")
    p.add_argument(
        "--cpus-per-worker", type=float, default=1, help="CPUs (and torch threads) per worker (ray)"
    )
    p.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker (ray)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=256,
        help="sentences per shard, rounded up to a multiple of the capture batch size (ray)",
    )
    p.add_argument(
        "--ray-address", default=None, help="join this Ray cluster (e.g. auto); default: start Ray here"
    )


def check_backend(args) -> None:
    """The Ray options must be usable (checked before any model is loaded)."""
    positive(args, "workers", "shard_size")
    if not args.cpus_per_worker > 0 or not args.gpus_per_worker >= 0:
        raise ProbekitError(
            "--cpus-per-worker must be > 0 and --gpus-per-worker >= 0", fix="e.g. --cpus-per-worker 1"
        )


def backend_session(args):
    """One Ray session for the whole command with ``--backend ray`` (every shard pool of the command runs
    in it), a no-op context for local."""
    import contextlib

    if args.backend != "ray":
        return contextlib.nullcontext()
    from probekit.parallel.shards import ray_session

    return ray_session(args.ray_address)


def sharded(args, model):
    """``model`` wrapped for the Ray backend (`probekit.parallel.sharded_model`), or None for local."""
    if args.backend != "ray":
        return None
    from probekit.parallel import sharded_model

    return sharded_model(model, sharded_options(args), shard_size=args.shard_size)


def sharded_options(args):
    """The `probekit.parallel.RayOptions` of ``--workers``, ``--cpus-per-worker``, ... ."""
    from probekit.parallel import RayOptions

    return RayOptions(
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        address=args.ray_address,
    )
