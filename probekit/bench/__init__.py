"""Benchmark harness behind `probekit bench`: timing, fresh-process peak memory, profiles, the report.

The benchmarks live in the repository's ``benchmarks/bench_<name>.py`` and use this package as
``from probekit import bench``. How things are measured, and the module of each part:
``docs/methods/benchmarks.md``.

- `probekit.bench.context`: `BENCHMARKS`, `COLUMNS`, `BenchContext`, `set_threads`, `machine_info`,
  `bench_sentences`, `capture_streams`;
- `probekit.bench.timing`: `interleaved`, `interleaved_chunks`, `per_repeat_ratio`, `cprofile_top`,
  `torch_profile_top`;
- `probekit.bench.memory`: `RssSampler`, `sampling`, `mark_baseline`, `measure_in_subprocess`,
  `measure_in_process`;
- `probekit.bench.runner`: `run_benchmark`, `run_all`, `render_only`, `load_module`, `check_rows`,
  `item_frame`;
- `probekit.bench.render`: `summarize`, `render_report`;
- ``python -m probekit.bench child SPEC_JSON`` (`probekit.bench.__main__`): the fresh process of
  `measure_in_subprocess`.
"""

from probekit.bench.context import (
    BENCHMARKS,
    COLUMNS,
    EWT_DEV,
    TITLES,
    BenchContext,
    bench_sentences,
    capture_streams,
    machine_info,
    set_threads,
    thread_pools,
)
from probekit.bench.memory import (
    RssSampler,
    current_rss_mb,
    mark_baseline,
    maxrss_mb,
    measure_in_process,
    measure_in_subprocess,
    memory_record,
    sampling,
)
from probekit.bench.render import meta_from_report, render_report, summarize
from probekit.bench.runner import (
    POSITIVE_COLUMNS,
    check_rows,
    default_benchmarks_dir,
    item_frame,
    load_module,
    render_only,
    run_all,
    run_benchmark,
)
from probekit.bench.timing import (
    cprofile_top,
    interleaved,
    interleaved_chunks,
    per_repeat_ratio,
    torch_profile_top,
)

__all__ = [
    "BENCHMARKS",
    "COLUMNS",
    "EWT_DEV",
    "POSITIVE_COLUMNS",
    "TITLES",
    "BenchContext",
    "RssSampler",
    "bench_sentences",
    "capture_streams",
    "check_rows",
    "cprofile_top",
    "current_rss_mb",
    "default_benchmarks_dir",
    "interleaved",
    "interleaved_chunks",
    "item_frame",
    "load_module",
    "machine_info",
    "mark_baseline",
    "maxrss_mb",
    "measure_in_process",
    "measure_in_subprocess",
    "memory_record",
    "meta_from_report",
    "per_repeat_ratio",
    "render_only",
    "render_report",
    "run_all",
    "run_benchmark",
    "sampling",
    "set_threads",
    "summarize",
    "thread_pools",
    "torch_profile_top",
]
