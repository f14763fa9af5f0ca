"""Would capture meet issue 19's 1.05x goal without the TransformerLens bridge? A measurement, not a feature.

    python scripts/measure_bridge_bypass.py smollm2-135m [N_SENTENCES]

Capture reads three kinds of hook: ``resid_pre``, ``resid_post`` and ``attn.hook_pattern``. A plain
Hugging Face model gives all three through ordinary torch forward hooks: a decoder/encoder layer's input
and output, and the second output of the eager attention module (its softmax weights). This script
loads the model twice, once as probekit does (the bridge) and once as plain HF with the same weights
(`benchmarks/bench_capture.load_pristine_hf`, hooks by `benchmarks/bench_capture.HfHooks`, whose
``capture-hf-hooks`` variant times the same in ``make bench``). It then checks three things.

1. **Bit identity, hook by hook.** Every layer's ``resid_pre``, ``resid_post`` and pattern, over the real
   tokens of every batch, from HF hooks against the bridge's ``run_with_cache``.
2. **Bit identity of what capture stores.** `probekit.activations.capture` runs twice into fresh
   cache folders, once as shipped and once with the bridge's ``run_with_cache`` replaced by the HF hooks.
   The two ``checksums.json`` must be equal; they hold the BLAKE2b digest of every stored array.
3. **Time.** Three variants run interleaved, with rotated order, at 1 torch thread, as in ``make bench``:
   the head-less HF forward (``hf-body``); capture as shipped; capture through HF hooks. Each ratio is
   taken against ``hf-body`` within a repetition, and the median over repetitions is reported.

It prints its findings and writes nothing under ``results/``. The closing note of issue 19 quotes a run.
"""

from __future__ import annotations

import functools
import json
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
from benchmarks.bench_capture import HfHooks, Workload, capture_through, load_pristine_hf  # noqa: E402
from probekit import bench  # noqa: E402


def check_hooks(model, hooks: HfHooks, work: Workload) -> tuple[int, int, float]:
    """(hook tensors compared, of which bit-identical, max |diff|) over real tokens of every batch."""
    names = {
        f"blocks.{i}.{h}"
        for i in range(model.n_layers)
        for h in ("hook_resid_pre", "hook_resid_post", "attn.hook_pattern")
    }
    compared = same = 0
    worst = 0.0
    with torch.inference_mode():
        for ids, mask in work.padded:
            _, ours = hooks.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in names)
            _, theirs = model.bridge.run_with_cache(
                ids, attention_mask=mask, names_filter=lambda n: n in names
            )
            for name in sorted(names):
                for b in range(ids.shape[0]):
                    t = int(mask[b].sum())
                    x, y = ours[name][b], theirs[name][b]
                    x, y = (x[:, :t, :t], y[:, :t, :t]) if "pattern" in name else (x[:t], y[:t])
                    compared += 1
                    if torch.equal(x, y):
                        same += 1
                    else:
                        worst = max(worst, float((x - y).abs().max()))
    return compared, same, worst


def run_capture(model, hooks: HfHooks | None, sentences, root: Path) -> dict:
    """``checksums.json`` of a capture of resid_pre, resid_post and attention (through ``hooks`` if given)."""
    folder = Path(tempfile.mkdtemp(dir=root))
    cap = capture_through(model, hooks, sentences, folder, resid=("resid_pre", "resid_post"))
    sums = json.loads((cap.path / "checksums.json").read_text())
    del cap
    shutil.rmtree(folder, ignore_errors=True)
    return sums


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "smollm2-135m"
    n = int(argv[1]) if len(argv) > 1 else 256
    torch.set_num_threads(1)
    model = pk.load_model(name, device="cpu")
    hooks = HfHooks(load_pristine_hf(name))
    sentences, source = bench.bench_sentences(n, bench.BenchContext(data=None))
    work = Workload(model, sentences)
    print(
        f"{name}: {n} sentences of {source}, {len(work.padded)} batches of {work.batch_size}, 1 torch thread"
    )

    compared, same, worst = check_hooks(model, hooks, work)
    print(f"1. hooks: {same} of {compared} (hook, sentence) tensors bit-identical; max |diff| {worst:.1e}")

    root = Path(tempfile.mkdtemp(prefix="bypass-"))
    shipped = run_capture(model, None, sentences, root)
    bypassed = run_capture(model, hooks, sentences, root)
    print(
        f"2. capture: checksums.json {'identical' if shipped == bypassed else 'DIFFERENT'} "
        f"({len(shipped.get('files', shipped))} stored files)"
    )

    def hf_body():
        with torch.inference_mode():
            for ids, mask in work.padded:
                hooks.body(input_ids=ids, attention_mask=mask)

    variants = {
        "hf-body": hf_body,
        "capture (bridge)": functools.partial(run_capture, model, None, sentences, root),
        "capture (HF hooks)": functools.partial(run_capture, model, hooks, sentences, root),
    }
    for fn in variants.values():
        fn()  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    reps = 3
    for rep in range(reps):
        order = list(variants)[rep % len(variants) :] + list(variants)[: rep % len(variants)]
        for key in order:
            start = time.perf_counter()
            variants[key]()
            seconds[key].append(time.perf_counter() - start)
    shutil.rmtree(root, ignore_errors=True)
    print(f"3. time, {reps} repetitions (median; ratio = median of per-repetition ratios to hf-body):")
    for key, secs in seconds.items():
        ratios = [s / b for s, b in zip(secs, seconds["hf-body"], strict=True)]
        print(
            f"   {key:20s} {statistics.median(secs):7.2f} s   {statistics.median(ratios):.3f}x "
            f"(min/max {min(ratios):.3f}-{max(ratios):.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
