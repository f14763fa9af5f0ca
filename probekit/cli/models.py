"""`probekit models`: the built-in model names."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the built-in models",
        description="List the built-in model names that load_model() understands.",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from probekit.models import list_models

    rows = list_models()
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    print("  ".join(k.ljust(w) for k, w in widths.items()))
    for r in rows:
        print("  ".join(r[k].ljust(w) for k, w in widths.items()))
    return 0
