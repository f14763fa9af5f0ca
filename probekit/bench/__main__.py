"""``python -m probekit.bench child SPEC_JSON``: the fresh process that `measure_in_subprocess` starts.

The spec names a file, a function in it, its keyword arguments, the thread count and where to write the
result. The function runs while `probekit.bench.memory.sampling` samples this process's memory (it calls
`mark_baseline`, from ``probekit.bench``, after its warm-up); the result JSON is its dict plus the memory
columns of `memory_record`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from probekit.bench.context import set_threads
from probekit.bench.memory import memory_record, sampling
from probekit.bench.runner import load_module


def child(spec_json: str) -> int:
    """Run the function the spec names under the memory sampler and write its result; returns 0.

    Parameters
    ----------
    spec_json : str
        JSON with ``module`` (a file path), ``func``, ``kwargs``, ``threads`` and ``result`` (a path).

    Returns
    -------
    int
        The exit status (0; a failure raises, and the parent reports the child's stderr).
    """
    spec = json.loads(spec_json)
    set_threads(spec["threads"])
    with sampling() as sampler:
        mod = load_module(Path(spec["module"]))
        out = getattr(mod, spec["func"])(**spec["kwargs"]) or {}
    out.update(memory_record(sampler))
    out["rss_method"] = "fresh process: ru_maxrss (whole life)" + (
        "; VmRSS/RssAnon/RssFile sampled every 10 ms from the baseline on" if sampler.sampled else ""
    )
    Path(spec["result"]).write_text(json.dumps(out, default=float))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line: ``child SPEC_JSON``; anything else prints the usage and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "child":
        return child(argv[1])
    print("usage: python -m probekit.bench child SPEC_JSON   (used by `probekit bench`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
