"""When does capture's heap peak, and what sets it? A measurement, not a feature.

    python scripts/trace_capture_memory.py N_SENTENCES [wide] [traced]

Loads MiniLM at 1 torch thread, takes the memory benchmark's input
(`benchmarks/bench_memory.sentences_for`: EWT dev cycled beyond its length, the 32 longest first and only
narrower ones after them), warms up on 16 sentences, then samples this process's RssAnon every 10 ms
during one capture of every layer's resid_post and attention. It prints
the peak over the warmed-up level, when in the run it happened, and the running maximum at fractions of
the run. With ``wide``, the first 32 of the N sentences are replaced by the 32 widest of the
10,000-sentence input, so that a small input has batches as wide as the large one's. It also prints the
level when the first batch is padded (what capture holds before any forward: the packed encodings, the
chunk digests, the batch order) and when capture has returned. With ``traced``, `tracemalloc` runs
through the capture and the allocations alive when the third batch is padded (two batches' tensors are
then alive: the peak) are listed by source line: what Python and numpy hold at the peak, against RssAnon.

Run it under ``MALLOC_MMAP_THRESHOLD_=1048576`` to see the heap without glibc's dynamic mmap threshold.
It writes nothing under ``results/``; docs/methods/capture.md quotes runs.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import benchmarks.bench_memory as bm  # noqa: E402
import probekit.activations.capture as capture_module  # noqa: E402
from probekit.activations.align import PackedEncodings, as_sentences  # noqa: E402
from probekit.activations.capture import capture  # noqa: E402
from probekit.models import load_model  # noqa: E402


def anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    n = int(argv[0]) if argv else 100
    traced = "traced" in argv[1:]
    model = load_model("minilm-l6", device="cpu")
    sentences = as_sentences(bm.sentences_for(model, n, None)[0])
    if "wide" in argv[1:]:
        big = as_sentences(bm.sentences_for(model, 10000, None)[0])
        lens = PackedEncodings.encode(model, big).n_tokens
        widest = sorted(range(len(big)), key=lambda i: -int(lens[i]))[:32]
        sentences = [big[i] for i in widest] + list(sentences)[32:]
    widths = sorted((int(t) for t in PackedEncodings.encode(model, sentences).n_tokens), reverse=True)
    root = Path(tempfile.mkdtemp(prefix="trace-capture-"))
    try:
        capture(model, sentences[:16], cache_dir=root / "warm", progress=False)
        base = anon_mb()
        trace: list[tuple[float, float]] = []
        done = threading.Event()
        start = time.perf_counter()

        def sample() -> None:
            while not done.is_set():
                trace.append((time.perf_counter() - start, anon_mb() - base))
                time.sleep(0.01)

        padded: list[float] = []  # RssAnon over the base each time a batch is padded
        pad_batch = capture_module.pad_batch

        def pad_and_look(*args, **kwargs):
            padded.append(anon_mb() - base)
            if traced and len(padded) == 3:  # batches 1 and 2 alive: capture's peak
                now, peak = (x / 2**20 for x in tracemalloc.get_traced_memory())
                print(f"at the third batch: traced {now:.1f} MB (traced peak so far {peak:.1f} MB)")
                for stat in tracemalloc.take_snapshot().statistics("lineno")[:10]:
                    print(f"    {stat}")
            return pad_batch(*args, **kwargs)

        capture_module.pad_batch = pad_and_look
        if traced:
            tracemalloc.start()
        sampler = threading.Thread(target=sample)
        sampler.start()
        capture(
            model, sentences, resid=("resid_post",), attention=True, cache_dir=root / "run", progress=False
        )
        returned = anon_mb() - base
        done.set()
        sampler.join()
    finally:
        capture_module.pad_batch = pad_batch
        tracemalloc.stop()
        shutil.rmtree(root, ignore_errors=True)
    total = trace[-1][0]
    when, peak = max(trace, key=lambda x: x[1])
    print(f"{len(sentences)} sentences, widest batches {widths[0:64:16]} tokens; {total:.1f} s")
    print(f"peak RssAnon +{peak:.1f} MB over the warmed-up level, at {when / total:.0%} of the run")
    print(f"  at the first batch: +{padded[0]:.1f} MB; when capture returned: +{returned:.1f} MB")
    for q in (0.05, 0.25, 0.5, 0.75, 1.0):
        print(f"  running max at {q:.0%}: +{max(v for t, v in trace if t <= q * total):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
