"""Peak memory of a call: a sampler of ``/proc/self/status``, the baseline mark, fresh-process measurement.

See ``docs/methods/benchmarks.md`` for what each memory column means.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import ClassVar

__all__ = [
    "RssSampler",
    "current_rss_mb",
    "mark_baseline",
    "maxrss_mb",
    "measure_in_process",
    "measure_in_subprocess",
    "memory_record",
    "sampling",
]


class RssSampler:
    """Samples ``/proc/self/status`` (VmRSS, RssAnon, RssFile) in a thread; keeps the maxima in MiB.

    Parameters
    ----------
    interval : float
        Seconds between samples.

    Examples
    --------
    >>> sampler = RssSampler().start()
    >>> peak = sampler.stop()
    >>> sorted(peak), sampler.baseline_rss_mb is None
    (['anon', 'file', 'rss'], True)
    """

    FIELDS: ClassVar[dict[str, str]] = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = {"rss": 0.0, "anon": 0.0, "file": 0.0}
        self.baseline_rss_mb: float | None = None
        self.baseline_anon_mb: float | None = None  # RssAnon at the mark: input data, model, warm-up
        self.available = Path("/proc/self/status").exists()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def read(self) -> dict[str, float]:
        """The current values (MiB) of the fields this system reports."""
        now = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in self.FIELDS:
                    now[self.FIELDS[key]] = int(line.split()[1]) / 1024.0
        return now

    def _loop(self) -> None:
        while not self._stop.is_set():
            for k, v in self.read().items():
                self.peak[k] = max(self.peak[k], v)
            self._stop.wait(self.interval)

    @property
    def sampled(self) -> bool:
        """Whether the maxima count from a baseline: sampling was possible and `mark_baseline` ran."""
        return self.available and self.baseline_rss_mb is not None

    def start(self) -> RssSampler:
        """Start sampling (where ``/proc/self/status`` exists); returns self."""
        if self.available:
            self._thread.start()
        return self

    def mark_baseline(self) -> None:
        """Record the current RSS as ``baseline_rss_mb`` (and RssAnon as ``baseline_anon_mb``) and restart
        the maxima from the current values."""
        self.baseline_rss_mb = current_rss_mb()
        now = self.read()
        self.baseline_anon_mb = now.get("anon")
        self.peak = {k: now.get(k, 0.0) for k in self.peak}

    def stop(self) -> dict[str, float]:
        """Stop sampling; returns the maxima (also kept in ``peak``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for k, v in self.read().items():
            self.peak[k] = max(self.peak[k], v)
        return dict(self.peak)


# The sampler of the measurement in progress, for `mark_baseline` (which the measured code calls
# without arguments). A context variable: set and reset by `sampling`, no value shared between calls.
_ACTIVE: ContextVar[RssSampler | None] = ContextVar("probekit_bench_sampler", default=None)


@contextlib.contextmanager
def sampling() -> Iterator[RssSampler]:
    """Sample this process's memory for the ``with`` block; `mark_baseline` inside it marks this sampler.

    Yields
    ------
    RssSampler
        Stopped when the block ends; its ``peak`` and ``baseline_rss_mb`` then hold the results.

    Examples
    --------
    >>> with sampling() as sampler:
    ...     mark_baseline()
    >>> sampler.baseline_rss_mb > 0
    True
    """
    sampler = RssSampler().start()
    token = _ACTIVE.set(sampler)
    try:
        yield sampler
    finally:
        sampler.stop()
        _ACTIVE.reset(token)


def mark_baseline() -> None:
    """Record the current RSS as the baseline of the measurement in progress (see `sampling`).

    Call it in the measured function after loading and warm-up; the sampled ``run_peak_*`` values count
    from here. Outside a measurement it does nothing.

    Examples
    --------
    >>> measure_in_process(lambda: mark_baseline() or {})["baseline_rss_mb"] > 0
    True
    """
    sampler = _ACTIVE.get()
    if sampler is not None:
        sampler.mark_baseline()


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB (``/proc/self/status``, else psutil, else NaN)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    with contextlib.suppress(ImportError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    return float("nan")


def maxrss_mb() -> float:
    """This process's RSS high-water mark, in MiB (``getrusage(RUSAGE_SELF).ru_maxrss``)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 2**20 if sys.platform == "darwin" else ru / 1024.0  # bytes on macOS, KiB on Linux


def memory_record(sampler: RssSampler) -> dict:
    """The memory columns of a finished measurement, from its (stopped) sampler.

    Parameters
    ----------
    sampler : RssSampler
        The sampler of `sampling`, after the block ended.

    Returns
    -------
    dict
        ``peak_rss_mb`` (`maxrss_mb`), ``baseline_rss_mb``, ``baseline_anon_mb`` and the sampled maxima
        ``run_peak_rss_mb``, ``run_peak_anon_mb``, ``run_peak_file_mb`` (None unless sampled and a
        baseline was marked).
    """
    sampled = sampler.sampled
    return {
        "peak_rss_mb": maxrss_mb(),
        "baseline_rss_mb": sampler.baseline_rss_mb,
        "baseline_anon_mb": sampler.baseline_anon_mb if sampled else None,
        "run_peak_rss_mb": sampler.peak["rss"] if sampled else None,
        "run_peak_anon_mb": sampler.peak["anon"] if sampled else None,
        "run_peak_file_mb": sampler.peak["file"] if sampled else None,
    }


def measure_in_subprocess(
    module: str | os.PathLike, func: str, kwargs: dict, *, threads: int, timeout: float = 3600
) -> dict:
    """Run ``module.func(**kwargs)`` in a fresh interpreter (``python -m probekit.bench child``).

    Parameters
    ----------
    module : str or path
        The file that defines ``func`` (e.g. a benchmark's ``__file__``).
    func : str
        A function of that module returning a JSON-able dict; it calls `mark_baseline` after its warm-up.
    kwargs : dict
        JSON-able keyword arguments.
    threads : int
        torch/BLAS threads in the child.
    timeout : float
        Seconds before the child is killed.

    Returns
    -------
    dict
        ``func``'s result plus `memory_record`'s columns and ``rss_method``.

    Raises
    ------
    RuntimeError
        When the child fails; the message ends with its stderr.

    Examples
    --------
    ``tests/unit/test_bench.py`` runs one (a fresh interpreter takes seconds to import torch):

    >>> out = measure_in_subprocess("child_mod.py", "child", {"mb": 120}, threads=1)  # doctest: +SKIP
    >>> out["run_peak_rss_mb"] - out["baseline_rss_mb"] > 60  # doctest: +SKIP
    True
    """
    with tempfile.TemporaryDirectory(prefix="probekit-bench-") as tmp:
        result = Path(tmp) / "result.json"
        spec = {
            "module": str(Path(module).resolve()),
            "func": func,
            "kwargs": kwargs,
            "threads": int(threads),
            "result": str(result),
        }
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            OPENBLAS_NUM_THREADS=str(threads),
            TOKENIZERS_PARALLELISM="false",
        )
        cmd = [sys.executable, "-m", "probekit.bench", "child", json.dumps(spec)]
        if os.path.exists("/bin/sh"):
            # Linux carries the parent's RSS high-water mark into ru_maxrss across fork+exec (the benchmark
            # process holds models, so a direct child would report *our* peak). A shell that forks again
            # gives the child a fresh mark.
            cmd = ["/bin/sh", "-c", '"$@"; exit $?', "probekit-bench-child", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(
                f"benchmark child {Path(module).name}:{func} failed (exit {proc.returncode}):\n"
                f"{proc.stderr[-3000:]}"
            )
        return json.loads(result.read_text())


def measure_in_process(fn: Callable[[], dict]) -> dict:
    """Like `measure_in_subprocess` but in this process (for ``--quick``: no interpreter start-up).

    ``peak_rss_mb`` is then this process's high-water mark so far, not the call's.

    Parameters
    ----------
    fn : callable
        Returns a dict (or None); it calls `mark_baseline` after its warm-up.

    Returns
    -------
    dict
        ``fn``'s result plus `memory_record`'s columns and ``rss_method``.

    Examples
    --------
    >>> out = measure_in_process(lambda: {"n": 1})
    >>> out["n"], out["baseline_rss_mb"], out["run_peak_rss_mb"]  # no baseline marked
    (1, None, None)
    """
    with sampling() as sampler:
        out = fn() or {}
    out.update(memory_record(sampler))
    out["rss_method"] = (
        "in-process (--quick): ru_maxrss of the whole benchmark process; sampled from the baseline on"
    )
    return out
