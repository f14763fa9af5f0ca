"""What one `probekit bench` call shares: the benchmark names, the options, threads, the machine, the input.

See ``docs/methods/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from probekit.data.bundled import EWT_DEV
from probekit.errors import ProbekitError
from probekit.report.provenance import cpu_model, torch_cpu_capability

#: benchmark names, in report order; each is ``benchmarks/bench_<name>.py``
BENCHMARKS: tuple[str, ...] = (
    "capture",
    "memory",
    "ablation",
    "probes",
    "e2e",
    "mediation",
    "trees",
    "throughput",
)
#: the columns every benchmark row has (benchmarks add metric columns after these)
COLUMNS: tuple[str, ...] = (
    "benchmark",
    "variant",
    "model",
    "n_sentences",
    "n_tokens",
    "repeat",
    "seconds",
    "tokens_per_s",
    "peak_rss_mb",
)
#: the report's section heading of each benchmark
TITLES: dict[str, str] = {
    "capture": "1. Capture: word-level resid_post + attention, every layer",
    "memory": "2. Memory scaling of capture",
    "ablation": "3. Head-ablation sweep",
    "probes": "4. Probe sweep: every residual-stream layer, UPOS",
    "e2e": "5. End to end: `make run` by stage",
    "mediation": "6. Mediation patching: probekit vs the transformer_lens.patching loop",
    "trees": "7. Structural probes: every layer, batched trainer vs the plain loop",
    "throughput": "8. Data-parallel heads on Ray: sentences per second, 1M-sentence projection",
}

__all__ = [
    "BENCHMARKS",
    "COLUMNS",
    "EWT_DEV",
    "TITLES",
    "BenchContext",
    "bench_sentences",
    "capture_streams",
    "machine_info",
    "set_threads",
    "thread_pools",
]


def _stderr(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchContext:
    """Options shared by the benchmarks of one `probekit bench` call.

    Parameters
    ----------
    quick : bool
        Tiny models and a few sentences: checks the harness and the outputs, not performance.
    out : Path
        The output folder (``benchmarks.csv``, ``benchmarks.md``, ``profiles/``, ``notes/``).
    repeats : int or None
        Timed repetitions per variant; None: 1 with ``quick``, 3 otherwise (`n_repeats`).
    threads : int
        torch/BLAS threads, set with `set_threads` and recorded in every row.
    manifest : Path
        The run manifest the end-to-end benchmark breaks down by stage.
    data : str or None
        The sentence source spec; None: EWT dev if present, else ``template:svo_adj`` (`bench_sentences`).
    log : callable or None
        Where progress messages go (`say`); None: stderr with a time stamp.

    Examples
    --------
    >>> ctx = BenchContext(quick=True, out=Path("/tmp/bench"))
    >>> ctx.n_repeats, BenchContext(repeats=2).n_repeats, BenchContext().n_repeats
    (1, 2, 3)
    """

    quick: bool = False
    out: Path = field(default_factory=lambda: Path("results/benchmarks"))
    repeats: int | None = None
    threads: int = 1
    manifest: Path = field(default_factory=lambda: Path("results/seed_claims/manifest.json"))
    data: str | None = None
    log: Callable[[str], None] | None = None

    @property
    def n_repeats(self) -> int:
        """The timed repetitions per variant: ``repeats``, or 1 with ``quick`` and 3 otherwise."""
        return self.repeats if self.repeats is not None else (1 if self.quick else 3)

    def say(self, msg: str) -> None:
        """Report progress through ``log`` (stderr with a time stamp when None)."""
        (self.log or _stderr)(msg)


# --------------------------------------------------------------------------------------------------
# machine and threads


def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads in torch and in every BLAS/OpenMP pool (numpy's, scipy's, torch's).

    threadpoolctl only limits libraries already loaded, and scipy ships its own OpenBLAS, loaded on first
    import: so the environment variables are set for anything loaded later, and scipy/sklearn/torch are
    imported before limiting. (Without this, scipy's OpenBLAS keeps one thread per core; on a loaded
    machine that made a 576×576 ``eigh`` 25× slower — see the probe benchmark.) The limit is process-wide
    until set again.

    Parameters
    ----------
    n : int
        Threads per pool.

    Examples
    --------
    >>> import torch
    >>> set_threads(1)
    >>> torch.get_num_threads(), os.environ["OMP_NUM_THREADS"]
    (1, '1')
    """
    n = int(n)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    with contextlib.suppress(ImportError):
        import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS so that it can be limited)
        import sklearn.linear_model  # noqa: F401
    torch.set_num_threads(n)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # process-wide until changed


def thread_pools() -> list[str]:
    """The loaded thread pools and their sizes (threadpoolctl), e.g. ``openblas 0.3.30 (scipy): 1``.

    Returns
    -------
    list of str
        One line per pool; empty without threadpoolctl.

    Examples
    --------
    >>> all(line.rsplit(": ", 1)[1].isdigit() for line in thread_pools())
    True
    """
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        return [
            f"{i['internal_api']} {i.get('version') or ''} ({Path(i['filepath']).name}): {i['num_threads']}"
            for i in threadpool_info()
        ]
    return []


def machine_info(threads: int) -> dict:
    """CPU count, threads, load average and package versions, for the report's machine section.

    Parameters
    ----------
    threads : int
        The thread count the run asked for (recorded as ``torch_threads``).

    Returns
    -------
    dict
        ``python``, ``platform``, ``processor``, ``cpu_model``, ``torch_cpu_capability``, ``cpu_count``,
        ``torch_threads``, ``torch_get_num_threads``, ``load_average_at_start``, ``versions``,
        ``thread_pools``, ``memory_gib``.

    Examples
    --------
    >>> info = machine_info(1)
    >>> info["torch_threads"], "torch" in info["versions"]
    (1, True)
    """
    from importlib import metadata

    import torch

    versions = {}  # type: dict[str, str | None]
    for dist in (
        "probekit-mi",
        "torch",
        "transformer-lens",
        "transformers",
        "numpy",
        "scikit-learn",
        "psutil",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "torch_cpu_capability": torch_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": int(threads),
        "torch_get_num_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in load],
        "versions": versions,
        "thread_pools": thread_pools(),
        "memory_gib": _total_memory_gib(),
    }


def _total_memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


# --------------------------------------------------------------------------------------------------
# input sentences


def bench_sentences(n: int, ctx: BenchContext | None = None):
    """The first ``n`` sentences of EWT dev (``ctx.data`` overrides; ``template:svo_adj`` if EWT is absent).

    With more sentences asked for than the source has, it is cycled and the repeats get new ids
    (``r1:<id>``, ...), so every sentence is a new cache entry but the token statistics are the same.

    Parameters
    ----------
    n : int
        How many sentences.
    ctx : BenchContext or None
        Its ``data`` spec, if set, is the source.

    Returns
    -------
    tuple of (list of Sentence, str)
        The sentences and a description of their source.

    Examples
    --------
    >>> sentences, source = bench_sentences(3, BenchContext(data="template:svo_adj?n=2"))
    >>> [s.id.startswith("r1:") for s in sentences], source
    ([False, False, True], 'template:svo_adj?n=2 cycled to 3 sentences (new ids)')
    """
    from probekit.data import load_dataset

    spec = (ctx.data if ctx and ctx.data else None) or (f"ud:{EWT_DEV}" if EWT_DEV.exists() else None)
    if spec is None:
        spec = f"template:svo_adj?n={n}"
    base = list(load_dataset(spec, max_sentences=n).sentences)
    if not base:
        raise ProbekitError(f"no sentences in {spec}")
    out = list(base)
    k = 1
    while len(out) < n:
        out += [replace(s, id=f"r{k}:{s.id}") for s in base[: n - len(out)]]
        k += 1
    source = spec if len(base) >= n else f"{spec} cycled to {n} sentences (new ids)"
    return out[:n], source


def capture_streams(model, sentences, cache_dir: Path | None = None):
    """Every layer's residual streams (``resid_pre`` and ``resid_post``, no attention) of ``sentences``:
    the untimed input of the probe benchmarks (``probes``, ``trees``), through probekit's capture cache.

    Parameters
    ----------
    model : Model
        From `probekit.models.load_model`.
    sentences : list of Sentence
        What to capture.
    cache_dir : Path or None
        Where the capture is cached; None: probekit's cache (``$PROBEKIT_CACHE``), so a rerun reuses it.

    Returns
    -------
    Capture
        `probekit.activations.capture.Capture` with every stream layer (``stream_layers``).

    Examples
    --------
    >>> import tempfile
    >>> from probekit.models import load_model
    >>> sentences, _ = bench_sentences(2, BenchContext(data="template:svo_adj?n=2"))
    >>> cap = capture_streams(load_model("tiny-llama"), sentences, Path(tempfile.mkdtemp()))
    >>> cap.stream(cap.stream_layers[-1]).shape[0] == sum(len(s) for s in sentences)
    True
    """
    from probekit.activations.capture import capture

    return capture(
        model,
        sentences,
        layers=None,
        resid=("resid_pre", "resid_post"),
        attention=False,
        cache=True,
        cache_dir=cache_dir,
        progress=False,
    )
