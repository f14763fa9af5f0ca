"""Timing the variants of a benchmark: interleaved runs, per-repeat ratios, profiles.

See ``docs/methods/benchmarks.md`` for why variants are interleaved and ratios taken per repeat.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

__all__ = [
    "Variant",
    "cprofile_top",
    "interleaved",
    "interleaved_chunks",
    "per_repeat_ratio",
    "torch_profile_top",
]

Variant = Callable[[], "Callable[[], None] | None"]

# --------------------------------------------------------------------------------------------------
# timing


def interleaved(
    variants: dict[str, Variant],
    repeats: int,
    warmup: dict[str, Callable[[], object]] | None = None,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> list[dict]:
    """Time every variant ``repeats`` times, interleaved and rotated; warm each one up once first.

    Repeat 0 runs A, B, C; repeat 1 runs B, C, A; and so on, so that load from other jobs hits every
    variant alike.

    Parameters
    ----------
    variants : dict of str to callable
        The variants by name. A variant may return a cleanup callable; it runs after the clock stops
        (e.g. deleting outputs).
    repeats : int
        Timed repetitions of every variant.
    warmup : dict of str to callable, optional
        A different warm-up call per variant (default: the variant itself).
    log : callable, optional
        Receives a progress line per call.
    label : str
        Prefix of the progress lines.

    Returns
    -------
    list of dict
        Rows ``{"variant", "repeat", "seconds"}`` in the order they ran.

    Examples
    --------
    >>> rows = interleaved({"a": lambda: None, "b": lambda: None}, repeats=2)
    >>> [(r["variant"], r["repeat"]) for r in rows]
    [('a', 0), ('b', 0), ('b', 1), ('a', 1)]
    """
    names = list(variants)
    for name in names:
        if log:
            log(f"{label} warm-up {name}")
        fn = (warmup or {}).get(name, variants[name])
        cleanup = fn()
        if callable(cleanup):
            cleanup()
    rows = []
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            cleanup = variants[name]()
            seconds = time.perf_counter() - start
            if callable(cleanup):
                cleanup()
            rows.append({"variant": name, "repeat": r, "seconds": seconds})
            if log:
                log(f"{label} repeat {r} {name}: {seconds:.2f} s")
    return rows


def interleaved_chunks(
    chunks: list[dict[str, Variant]],
    repeats: int,
    log: Callable[[str], None] | None = None,
    label: str = "",
    warmup: bool = True,
) -> list[dict]:
    """Like `interleaved`, but the input is cut into chunks and the variants alternate *within* each chunk.

    Every variant is warmed up on chunk 0; then, for each repetition, each chunk runs every variant back
    to back (order rotated per chunk), and a variant's time for the repetition is the sum over chunks.
    Load from other jobs that changes over minutes then hits all variants alike, instead of whichever
    happened to run during a busy minute.

    Parameters
    ----------
    chunks : list of dict of str to callable
        ``chunks[k][variant]`` runs that variant on chunk k (and may return a cleanup callable).
    repeats : int
        Timed repetitions.
    log : callable, optional
        Receives a progress line per warm-up and per repetition.
    label : str
        Prefix of the progress lines.
    warmup : bool
        Warm every variant up on chunk 0 first.

    Returns
    -------
    list of dict
        Rows ``{"variant", "repeat", "seconds"}``, one per variant and repetition.

    Examples
    --------
    >>> chunks = [{"a": lambda: None, "b": lambda: None} for _ in range(3)]
    >>> [(r["variant"], r["repeat"]) for r in interleaved_chunks(chunks, repeats=1)]
    [('a', 0), ('b', 0)]
    """
    names = list(chunks[0])
    for name in names if warmup else ():
        if log:
            log(f"{label} warm-up {name}")
        cleanup = chunks[0][name]()
        if callable(cleanup):
            cleanup()
    rows = []
    for r in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for k, chunk in enumerate(chunks):
            shift = (r + k) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                cleanup = chunk[name]()
                total[name] += time.perf_counter() - start
                if callable(cleanup):
                    cleanup()
        rows += [{"variant": name, "repeat": r, "seconds": total[name]} for name in names]
        if log:
            log(f"{label} repeat {r}: " + ", ".join(f"{n} {t:.1f} s" for n, t in total.items()))
    return rows


def per_repeat_ratio(frame: pd.DataFrame, reference: str, by: Sequence[str] = ("model",)) -> pd.Series:
    """Each row's seconds over the ``reference`` variant's seconds in the same repeat (and ``by`` keys).

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows with ``variant``, ``repeat``, ``seconds`` and the ``by`` columns.
    reference : str
        The variant that is 1.0.
    by : sequence of str
        Further keys a row and its reference share.

    Returns
    -------
    pandas.Series
        Aligned with ``frame``; NaN where the reference is absent.

    Examples
    --------
    >>> frame = pd.DataFrame({"model": ["m"] * 4, "variant": ["ref", "x"] * 2, "repeat": [0, 0, 1, 1],
    ...                       "seconds": [2.0, 3.0, 4.0, 4.0]})
    >>> per_repeat_ratio(frame, "ref").tolist()
    [1.0, 1.5, 1.0, 1.0]
    """
    keys = [*by, "repeat"]
    ref = frame[frame.variant == reference].set_index(keys)["seconds"]
    idx = pd.MultiIndex.from_frame(frame[keys])
    return pd.Series(frame["seconds"].to_numpy() / ref.reindex(idx).to_numpy(), index=frame.index)


# --------------------------------------------------------------------------------------------------
# profiles


def cprofile_top(fn: Callable[[], object], top: int = 15, sort: str = "tottime") -> str:
    """Run ``fn`` under cProfile; the ``top`` entries by ``sort`` as text, with paths shortened.

    Parameters
    ----------
    fn : callable
        What to profile.
    top : int
        How many entries.
    sort : str
        A `pstats` sort key.

    Returns
    -------
    str
        The call count line and the table, without pstats' "Ordered by" lines.

    Examples
    --------
    >>> cprofile_top(lambda: sorted(range(10)), top=3).split()[1:3]
    ['function', 'calls']
    """
    from probekit.report.provenance import REPO

    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats(sort).print_stats(top)
    text = buf.getvalue()
    prefixes = {str(Path(p).parent) + "/" for p in sys.path if p} | {str(Path.cwd()) + "/", str(REPO) + "/"}
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix, "")
    lines = [ln.rstrip() for ln in text.splitlines()]
    start = next((i for i, ln in enumerate(lines) if "function calls" in ln), 0)
    return "\n".join(
        ln for ln in lines[start:] if ln.strip() and not ln.strip().startswith(("Ordered by", "List reduced"))
    )


def torch_profile_top(fn: Callable[[], object], top: int = 12) -> str:
    """Run ``fn`` under ``torch.profiler`` (CPU); the ``top`` ops by self CPU time, with call counts.

    Parameters
    ----------
    fn : callable
        What to profile.
    top : int
        How many ops.

    Returns
    -------
    str
        torch's table.

    Examples
    --------
    >>> import torch
    >>> "aten::mm" in torch_profile_top(lambda: torch.ones(8, 8) @ torch.ones(8, 8), top=5)
    True
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
