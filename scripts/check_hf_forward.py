"""Check capture's plain-HF forward against the bridge on any model probekit loads; time both.

    python scripts/check_hf_forward.py smollm2-135m [N_SENTENCES]

Capture reads three kinds of hook: ``resid_pre``, ``resid_post`` and ``attn.hook_pattern``. For Llama,
Gemma 3 and BERT it reads them from plain Hugging Face modules that share the bridge's weight tensors
(`probekit.activations.forward.HfForward`), not from the bridge's ``run_with_cache`` (`BridgeForward`).
The unit tests check this on the tiny models; this script checks it on a real one (the Gemma 3 extra
included, which the default test run does not install), in three steps.

1. **Bit identity, hook by hook.** Every layer's ``resid_pre``, ``resid_post`` and pattern, over the real
   tokens of every batch, from `HfForward` against `BridgeForward` (same model, same padded batches).
2. **Bit identity of what capture stores.** `probekit.activations.capture` runs twice into fresh
   cache folders, as shipped and with its forward through the bridge. The two ``checksums.json`` must be
   equal; they hold the BLAKE2b digest of every stored array.
3. **Time.** Three variants run interleaved, with rotated order, at 1 torch thread, as in ``make bench``:
   the head-less HF forward (``hf-body``, the plain body itself); capture as shipped; capture through
   the bridge. Each ratio is taken against ``hf-body`` within a repetition; the median is reported.

It prints its findings and writes nothing under ``results/``.
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
from benchmarks.bench_capture import Workload, capture_through  # noqa: E402
from probekit import bench  # noqa: E402
from probekit.activations import hooks as hook_names  # noqa: E402
from probekit.activations.forward import HF_HOOKS, BridgeForward, HfForward  # noqa: E402


def check_hooks(model, work: Workload) -> tuple[int, int, float]:
    """(hook tensors compared, of which bit-identical, max |diff|) over real tokens of every batch."""
    names = {hook_names.block(i, h) for i in range(model.n_layers) for h in HF_HOOKS}
    plain = HfForward(model.hf_body, names, model.n_layers)
    bridge = BridgeForward(model, names, model.n_layers)
    compared = same = 0
    worst = 0.0
    with torch.inference_mode(), bridge.attached():
        for ids, mask in work.padded:
            ours, theirs = plain(ids, mask), bridge(ids, mask)
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


def run_capture(model, sentences, root: Path, bridge: bool = False) -> dict:
    """``checksums.json`` of a capture of resid_pre, resid_post and attention (bridge: through it)."""
    folder = Path(tempfile.mkdtemp(dir=root))
    cap = capture_through(model, sentences, folder, resid=("resid_pre", "resid_post"), bridge=bridge)
    sums = json.loads((cap.path / "checksums.json").read_text())
    del cap
    shutil.rmtree(folder, ignore_errors=True)
    return sums


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "smollm2-135m"
    n = int(argv[1]) if len(argv) > 1 else 256
    torch.set_num_threads(1)
    model = pk.load_model(name, device="cpu")
    sentences, source = bench.bench_sentences(n, bench.BenchContext(data=None))
    work = Workload(model, sentences)
    print(
        f"{name}: {n} sentences of {source}, {len(work.padded)} batches of {work.batch_size}, 1 torch thread"
    )

    if model.hf_body is None:
        print(f"{name}: capture runs through the bridge for this model (no plain body); nothing to check")
        return 0
    compared, same, worst = check_hooks(model, work)
    print(f"1. hooks: {same} of {compared} (hook, sentence) tensors bit-identical; max |diff| {worst:.1e}")

    root = Path(tempfile.mkdtemp(prefix="hf-forward-"))
    shipped = run_capture(model, sentences, root)
    bridged = run_capture(model, sentences, root, bridge=True)
    print(
        f"2. capture: checksums.json {'identical' if shipped == bridged else 'DIFFERENT'} "
        f"({len(shipped.get('files', shipped))} stored files)"
    )

    def hf_body():
        with torch.inference_mode():
            for ids, mask in work.padded:
                model.hf_body(input_ids=ids, attention_mask=mask)

    variants = {
        "hf-body": hf_body,
        "capture (shipped)": functools.partial(run_capture, model, sentences, root),
        "capture (bridge)": functools.partial(run_capture, model, sentences, root, bridge=True),
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
