"""What capture adds to the head-less forward, step by step. A measurement, not a feature.

    python scripts/split_capture_overhead.py [MODEL] [REPETITIONS] [N_SENTENCES]

Section 1 of `results/benchmarks` gives capture's time over ``hf-body-forward`` (the goal of issue 19:
at most 1.05×). This script splits that ratio into the steps capture adds, each timed as a variant of its
own, in the benchmark's setting: 1 torch thread and every BLAS pool limited to 1, the first
N_SENTENCES (default 256) EWT dev sentences, batches of 16 sorted by length, every variant once per
repetition in rotated order after one warm-up (`probekit.bench.timing.interleaved`; a capture's output
folder is deleted after the clock stops), ratios taken within a repetition and their median printed.

- ``body``: ``hf.base_model`` of a second, plain load of the model: the benchmark's ``hf-body-forward``.
- ``shared-body``: the same forward through ``Model.hf_body``, the module tree capture runs (it shares
  the bridge's weight tensors); no hooks.
- ``hooked``: capture's forward (`forward_for` with capture's hook names, batches widest first), every
  hook tensor kept for the batch; no aligning, pooling or writing.
- ``align``: what capture does before its first forward: `PackedEncodings.encode` (tokenising every
  word of every sentence) and `cache_key`.
- ``no-store``: `capture` with every batch's ``store`` (pooling, word attention, writes, digests) left
  out, by an executor that drops the task: aligning, the forward, the empty maps and the records.
- ``capture``: `capture` as shipped (``store`` on the worker thread beside the next forward).

Then, for the tokenising step alone: the tokenizer called once per sentence, as `align` did before
`align_many`, against one call of `encode_words` (the Rust backend, ``backend_tokenizer.encode_batch``)
for every word of every sentence, after checking that both give the same ids. Writes nothing under
``results/``; docs/methods/capture.md quotes runs.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from concurrent.futures import Future
from pathlib import Path

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import probekit.activations.capture as capture_module  # noqa: E402
from benchmarks.bench_capture import SerialExecutor, Workload, capture_through, load_pristine_hf  # noqa: E402
from probekit.activations import align as align_module  # noqa: E402
from probekit.activations.align import PackedEncodings  # noqa: E402
from probekit.activations.forward import forward_for  # noqa: E402
from probekit.bench.context import BenchContext, bench_sentences  # noqa: E402
from probekit.bench.timing import interleaved, per_repeat_ratio  # noqa: E402
from probekit.models import load_model  # noqa: E402


class DropExecutor(SerialExecutor):
    """Takes every ``store`` task and runs nothing: capture without its post-processing."""

    def submit(self, fn, *args, **kwargs):
        done: Future = Future()
        done.set_result(None)
        return done


def variants(name: str, n: int, tmp_root: Path) -> dict:
    model = load_model(name, device="cpu")
    pristine = load_pristine_hf(name).base_model
    sentences, _ = bench_sentences(n, BenchContext())
    work = Workload(model, sentences)

    def forward_of(body):
        def run():
            with torch.inference_mode():
                for ids, mask in work.padded:
                    body(input_ids=ids, attention_mask=mask)

        return run

    def hooked():
        with torch.inference_mode(), forward_for(model, work.names, model.n_layers) as forward:
            for ids, mask in reversed(work.padded):
                forward(ids, mask)

    def align():
        PackedEncodings.encode(model, sentences)
        capture_module.cache_key(model, sentences, {"layers": None})

    def capture(drop_store: bool = False):
        def run():
            folder = Path(tempfile.mkdtemp(dir=tmp_root))
            executor = capture_module.ThreadPoolExecutor
            if drop_store:
                capture_module.ThreadPoolExecutor = DropExecutor
            try:
                capture_through(model, sentences, folder)
            finally:
                capture_module.ThreadPoolExecutor = executor
            return lambda: shutil.rmtree(folder, ignore_errors=True)  # after the clock, as the benchmark

        return run

    return {
        "body": forward_of(pristine),
        "shared-body": forward_of(model.hf_body),
        "hooked": hooked,
        "align": align,
        "no-store": capture(drop_store=True),
        "capture": capture(),
    }, (model, sentences)


def timed(fns: dict, repetitions: int, reference: str) -> pd.DataFrame:
    """The benchmark's harness: one warm-up each, then rotated repetitions; each row's ``ratio`` is its
    seconds over ``reference``'s in the same repetition."""
    rows = pd.DataFrame(interleaved(fns, repetitions))
    return rows.assign(ratio=per_repeat_ratio(rows, reference, by=()))


def tokenising(model, sentences, repetitions: int) -> None:
    tok = model.tokenizer
    pieces = [align_module._word_pieces(model, s) for s in sentences]  # what `align` encodes per word
    flat = [p for per_sentence in pieces for p in per_sentence]

    def per_sentence():
        return [ids for p in pieces for ids in tok(p, add_special_tokens=False).input_ids]

    def backend():
        return align_module.encode_words(tok, flat)  # one backend call for every word

    if per_sentence() != backend():
        print("tokenising: the backend's ids differ from the tokenizer's; not timed")
        return
    rows = timed({"per-sentence": per_sentence, "backend": backend}, repetitions, "backend")
    a, b = (rows.seconds[rows.variant == k].median() for k in ("per-sentence", "backend"))
    print(
        f"tokenising {len(flat)} words: tokenizer per sentence {a * 1000:.1f} ms, one backend call "
        f"{b * 1000:.1f} ms (same ids)"
    )


def main(name: str = "minilm-l6", repetitions: int = 10, n: int = 256) -> None:
    torch.set_num_threads(1)
    tmp_root = Path(tempfile.mkdtemp(prefix="probekit-split-"))
    try:
        with threadpool_limits(1):
            fns, (model, sentences) = variants(name, n, tmp_root)
            rows = timed(fns, repetitions, "body")
            print(f"{name}, {n} sentences, {repetitions} repetitions, 1 torch thread")
            table = rows.groupby("variant", sort=False).agg(
                median_s=("seconds", "median"),
                min_s=("seconds", "min"),
                max_s=("seconds", "max"),
                vs_body=("ratio", "median"),
            )
            print(table.round(3).to_string())
            tokenising(model, sentences, repetitions)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(args[:1]), *(int(a) for a in args[1:3]))
