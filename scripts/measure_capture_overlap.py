"""What storing batch k on a worker thread while batch k+1 runs its forward saves, at 1 and 2 torch threads.

    python scripts/measure_capture_overlap.py [N_SENTENCES]

`probekit.activations.capture` as shipped (overlapped) against the same call with each batch stored on the
main thread right after its forward (``serial``: `benchmarks/bench_capture.SerialExecutor`, the
``capture-serial`` variant of ``make bench``). Both run alternately, in rotated order, into fresh cache
folders, on the first N EWT dev sentences (default 128), for MiniLM and SmolLM2 at 1 and 2 torch threads;
the first repetition is a warm-up. It prints the median seconds of each and the median per-repetition
ratio overlapped / serial. ``make bench`` times capture at 1 thread only; runs use every core (2 threads
here), where the store thread competes with the forward's own threads. Writes nothing under ``results/``.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import probekit as pk  # noqa: E402
from benchmarks.bench_capture import capture_through  # noqa: E402

REPEATS = 4  # the first is a warm-up


def main(n: int = 128) -> None:
    ewt = pk.load_dataset(f"ud:{REPO / 'data/ud-en-ewt/en_ewt-ud-dev.conllu'}")
    sentences = [ewt[i] for i in range(n)]
    for name in ("minilm-l6", "smollm2-135m"):
        model = pk.load_model(name, device="cpu")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seconds: dict[bool, list[float]] = {False: [], True: []}
            for rep in range(REPEATS):
                for serial in (False, True) if rep % 2 else (True, False):
                    folder = Path(tempfile.mkdtemp(prefix="pk-overlap-"))
                    t0 = time.perf_counter()
                    capture_through(model, sentences, folder, serial=serial)
                    seconds[serial].append(time.perf_counter() - t0)
                    shutil.rmtree(folder, ignore_errors=True)
            overlapped, serial_s = seconds[False][1:], seconds[True][1:]
            ratio = statistics.median(a / b for a, b in zip(overlapped, serial_s, strict=True))
            print(
                f"{name}, {threads} torch thread(s), {n} sentences: overlapped "
                f"{statistics.median(overlapped):.2f} s, serial {statistics.median(serial_s):.2f} s, "
                f"overlapped / serial {ratio:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 128)
