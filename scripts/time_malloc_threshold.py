"""What does a fixed glibc mmap threshold cost? A measurement, not a feature.

    python scripts/time_malloc_threshold.py [REPEATS]

Times minimal-pair scoring (`probekit.analyses.scoring.pair_scores`, SmolLM2, the first 200 pairs of
``template:agreement?n=300``, batches of 32, the forward-heavy work of the ``score`` stage) in fresh
processes, alternately with glibc's default (dynamic) mmap threshold and with
``MALLOC_MMAP_THRESHOLD_=1048576``, the setting under which capture's heap peak no longer depends on the
number of sentences (``results/benchmarks``, memory, ``capture-mmap-1mb``). Each process scores once to warm
up, then times three calls and prints their median. It writes nothing under ``results/``;
docs/methods/capture.md quotes a run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

CHILD = """
import statistics, sys, time
import probekit as pk
from probekit.analyses.scoring import pair_scores
from probekit.data import load_dataset
model = pk.load_model("smollm2-135m")
pairs = load_dataset("template:agreement?n=300")
pair_scores(model, pairs, batch_size=32, max_pairs=200)
times = []
for _ in range(3):
    start = time.perf_counter()
    pair_scores(model, pairs, batch_size=32, max_pairs=200)
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""

SETTINGS = {"default": {}, "MALLOC_MMAP_THRESHOLD_=1048576": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}


def main(argv: list[str]) -> int:
    repeats = int(argv[0]) if argv else 2
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(repeats):
        for name, extra in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
            )
            seconds[name].append(float(out.stdout.strip().splitlines()[-1]))
            took = time.perf_counter() - start
            print(f"{name}: {seconds[name][-1]:.2f} s (process {took:.0f} s)", flush=True)
    for name, values in seconds.items():
        print(f"{name}: median {statistics.median(values):.2f} s over {len(values)} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
