"""The engine: evaluate a plan clean and under many head interventions.

`run_sweep` runs the naive reference path (`_Sweep.naive`: one ``run_with_hooks``-style forward per head
set and batch, the way `transformer_lens.patching` works) or the fast path (`_Sweep.fast`: restart at
the first intervened layer from the cached residual stream, earlier blocks skipped, intervened copies
stacked along the batch, packed prefix tries, unembedding only where read). Both give the same numbers
up to float rounding; `EngineOptions` switches the fast path's optimisations off one by one. How and
why: ``docs/methods/interventions.md``, "Sweeps".

Hooks are attached with the bridge's ``hooks()`` context manager and skipped blocks are restored in
``finally`` blocks, so nothing is left behind when a metric raises.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import einops
import numpy as np
import torch

from probekit.activations import hooks
from probekit.analyses.interventions.heads import Head, heads_by_layer
from probekit.analyses.interventions.interventions import Intervention, StackedHeadSites, ZLayout, head_sites
from probekit.analyses.interventions.layout import Batch, forward_kwargs
from probekit.analyses.interventions.plan import Plan
from probekit.errors import ProbekitError

SWEEPS = ("fast", "naive")
#: the fast path's restart must reproduce the clean logits to this max abs difference
CHECK_TOL = 1e-3


@dataclass(frozen=True)
class EngineOptions:
    """The fast sweep's optimisations beyond restarting at the intervened layer (all exact up to float
    rounding); switch one off to measure what it buys (``benchmarks/bench_ablation.py``).

    - ``skip_blocks``: blocks before the restart layer are not executed (swapped for pass-throughs);
    - ``copies``: several intervened copies stacked along the batch in one forward;
    - ``truncate``: sequences cut after the last position a metric reads;
    - ``pack``: sequences stored as prefix tries packed into rows (the one option that moves values by
      float32 rounding, up to ~2e-4 in a SmolLM2 sentence log-prob; without it the engine equals the naive
      loop bit for bit);
    - ``restrict_unembed``: the unembedding runs only at the positions a metric reads.

    Examples
    --------
    >>> EngineOptions(pack=False)
    EngineOptions(skip_blocks=True, copies=True, truncate=True, pack=False, restrict_unembed=True)
    """

    skip_blocks: bool = True
    copies: bool = True
    truncate: bool = True
    pack: bool = True
    restrict_unembed: bool = True


DEFAULT_OPTIONS = EngineOptions()


@dataclass
class SweepResult:
    """Per-item metric values: ``clean[metric]  # [item]``, ``ablated[spec][metric]  # [item]``."""

    clean: dict[str, np.ndarray]
    ablated: list[dict[str, np.ndarray]]
    seconds: float = 0.0
    forwards: int = 0


def run_sweep(
    model,
    plan: Plan,
    specs: list[list[Head]],
    intervention: Intervention,
    *,
    sweep: str = "fast",
    preserve_patterns: bool = False,
    batch_items: int | None = None,
    max_tokens: int = 2048,
    progress: bool = False,
    check: bool = True,
    options: EngineOptions = DEFAULT_OPTIONS,
) -> SweepResult:
    """Evaluate ``plan`` clean and with each spec (a list of heads intervened on together) intervened on.

    ``preserve_patterns`` freezes every attention pattern at its clean value. ``batch_items``: items
    per clean forward (default: about 512 tokens); ``max_tokens`` caps one fast forward (copies x rows x
    width). ``check``: the fast path's first batch is checked against a full forward.
    """
    from tqdm.auto import tqdm

    if sweep not in SWEEPS:
        raise ProbekitError(f"unknown sweep {sweep!r}", fix=f"use one of {SWEEPS}")
    if batch_items is None:  # about 512 tokens per clean forward; fast sweeps stack copies up to max_tokens
        longest = max(plan.item_length(i) for i in range(plan.n_items))
        batch_items = max(1, 512 // (max(len(r) for r in plan.item_rows) * longest))
    if not isinstance(batch_items, int) or batch_items < 1:
        raise ProbekitError(f"batch_size must be a positive integer, not {batch_items!r}")
    t0 = time.perf_counter()
    batches = plan.batches(batch_items)
    bar = tqdm(
        total=len(batches) * len(specs),
        desc=f"ablate {model.name} ({sweep})",
        unit="ablation",
        disable=not progress,
        leave=False,
    )
    run = _Sweep(model, plan, specs, intervention, preserve_patterns, max_tokens, options, bar)
    fast = sweep == "fast"
    with torch.inference_mode():
        for b_index, items in enumerate(batches):
            batch = plan.make_batch(
                items,
                pack=fast and options.pack,
                truncate=fast and options.truncate,
                share_across_items=not intervention.item_specific,
            )
            if fast:
                run.fast(batch, check=check and b_index == 0)
            else:
                run.naive(batch)
    bar.close()
    return SweepResult(run.clean, run.ablated, time.perf_counter() - t0, run.forwards)


class _Sweep:
    """One sweep's state: the per-item results filled batch by batch, and the forward count."""

    def __init__(self, model, plan, specs, intervention, preserve_patterns, max_tokens, options, bar):
        self.model, self.plan, self.specs, self.intervention = model, plan, specs, intervention
        self.preserve, self.max_tokens, self.options, self.bar = preserve_patterns, max_tokens, options, bar
        self.clean = {m: np.zeros(plan.n_items) for m in plan.metrics}
        self.ablated = [{m: np.zeros(plan.n_items) for m in plan.metrics} for _ in specs]
        self.forwards = 0
        self.pattern_layers = plan.pattern_layers
        self.target_heads = {
            layer: [h for lyr, h in plan.target_heads if lyr == layer] for layer in self.pattern_layers
        }
        self.stop = None  # attention-only metrics: nothing after the last pattern layer matters
        if not plan.needs_logits and self.pattern_layers and max(self.pattern_layers) + 1 < model.n_layers:
            self.stop = max(self.pattern_layers) + 1

    # -- per batch
    def clean_pass(self, batch: Batch, restarts: list[int]):
        """The clean forward: record clean values; cache the residual stream at the ``restarts`` and, when
        read, the patterns. Returns ``(logits, cache, clean patterns of the target heads)``."""
        model, device = self.model, self.model.device
        names = {hooks.resid(s, "resid_pre") for s in restarts if self.stop is None or s < self.stop}
        if self.preserve or self.pattern_layers:
            names |= {hooks.pattern(layer) for layer in range(self.stop or model.n_layers)}
        logits, cache = model.bridge.run_with_cache(
            batch.input_ids.to(device),
            names_filter=names.__contains__,
            stop_at_layer=self.stop,
            **forward_kwargs(batch, model),
        )
        self.forwards += 1
        clean_pat = {
            layer: cache[hooks.pattern(layer)][:, self.target_heads[layer]] for layer in self.pattern_layers
        }
        sel = logits[batch.sel_b.to(device), batch.sel_t.to(device)] if self.plan.needs_logits else None
        vals = self.plan.values(batch, sel, clean_pat, logits)
        for m in self.plan.metrics:
            self.clean[m][batch.items] = vals[m]
        return logits, cache, clean_pat

    def replacements(self, batch: Batch):
        """``layer -> replacement`` for this batch, computed once per layer on first use."""
        model = self.model
        layout = ZLayout(
            batch.input_ids.shape[0],
            batch.input_ids.shape[1],
            model.n_heads,
            model.d_head,
            batch.position_ids,
            tuple(batch.blocks),
        )
        reps: dict[int, torch.Tensor] = {}

        def rep(layer: int) -> torch.Tensor:
            if layer not in reps:
                reps[layer] = self.intervention.replacement(layer, layout)
            return reps[layer]

        return rep

    def _record(self, si: int, items: list[int], vals: dict[str, np.ndarray]) -> None:
        for m in self.plan.metrics:
            self.ablated[si][m][items] = vals[m]

    def naive(self, batch: Batch) -> None:
        """The reference: one full forward per spec."""
        model, device, stop = self.model, self.model.device, self.stop
        _, cache, _ = self.clean_pass(batch, [])
        rep = self.replacements(batch)
        ids = batch.input_ids.to(device)
        for si, spec in enumerate(self.specs):
            hooked = [(site.layer, site.hook(rep(site.layer))) for site in head_sites(spec)]
            store: dict[int, torch.Tensor] = {}
            if self.preserve:
                hooked += [(layer, _freeze_pattern(cache, layer, 1)) for layer in range(model.n_layers)]
            hooked += [
                (layer, _capture_pattern(store, layer, self.target_heads[layer]))
                for layer in self.pattern_layers
            ]
            if self.preserve and stop is not None:
                hooked = [(layer, hk) for layer, hk in hooked if layer < stop]
            with model.bridge.hooks(fwd_hooks=[hk for _, hk in hooked]):
                out = model.bridge(ids, stop_at_layer=stop, **forward_kwargs(batch, model))
                self.forwards += 1
                sel = out[batch.sel_b.to(device), batch.sel_t.to(device)] if self.plan.needs_logits else None
                vals = self.plan.values(batch, sel, store, out)
            self._record(si, batch.items, vals)
            self.bar.update(1)

    def fast(self, batch: Batch, check: bool) -> None:
        """Specs grouped by the first layer they touch; each group restarts there, copies stacked."""
        model, plan, stop = self.model, self.plan, self.stop
        by_start: dict[int, list[int]] = {}
        for si, spec in enumerate(self.specs):
            by_start.setdefault(min(layer for layer, _ in spec), []).append(si)
        restarts = sorted(by_start) if model.is_causal else []
        logits, cache, clean_pat = self.clean_pass(batch, restarts)
        rep = self.replacements(batch)
        n_rows, width = batch.input_ids.shape
        per_copy = max(1, self.max_tokens // max(1, n_rows * width)) if self.options.copies else 1
        if check and by_start:
            _check_restart(model, plan, batch, cache, max(by_start), logits, self.options)
        for start in [s for s in list(by_start) if stop is not None and s >= stop]:
            for si in by_start.pop(start):  # cannot reach the patterns that are read: unchanged
                self._record(si, batch.items, {m: self.clean[m][batch.items] for m in plan.metrics})
                self.bar.update(1)
        for start, members in sorted(by_start.items()):
            for c0 in range(0, len(members), per_copy):
                chunk = members[c0 : c0 + per_copy]
                self._fast_chunk(batch, start, chunk, cache, clean_pat, rep)
                self.bar.update(len(chunk))

    def _fast_chunk(self, batch: Batch, start: int, chunk: list[int], cache, clean_pat, rep) -> None:
        """One forward for the specs ``chunk`` (all starting at layer ``start``), stacked as copies."""
        model, plan, stop, device = self.model, self.plan, self.stop, self.model.device
        copies = len(chunk)
        masks: dict[int, torch.Tensor] = {}  # layer -> [copy, head]
        for k, si in enumerate(chunk):
            for layer, hs in heads_by_layer(self.specs[si]).items():
                masks.setdefault(layer, torch.zeros((copies, model.n_heads), dtype=torch.bool))[k, hs] = True
        fwd_hooks = [StackedHeadSites(layer, mk).hook(rep(layer)) for layer, mk in masks.items()]
        store: dict[int, torch.Tensor] = {}
        if self.preserve:
            fwd_hooks += [
                _freeze_pattern(cache, layer, copies) for layer in range(start, stop or model.n_layers)
            ]
        fwd_hooks += [
            _capture_pattern(store, layer, self.target_heads[layer])
            for layer in self.pattern_layers
            if layer >= start or not model.is_causal
        ]
        restricted = plan.needs_logits and not plan.needs_full_logits and self.options.restrict_unembed
        if restricted:
            fwd_hooks.append((hooks.UNEMBED_IN, _select_positions(batch.sel_b, batch.sel_t, copies)))
        with contextlib.ExitStack() as stack:
            if model.is_causal and self.options.skip_blocks:
                stack.enter_context(skip_blocks(model, start))
            stack.enter_context(model.bridge.hooks(fwd_hooks=fwd_hooks))
            kwargs = forward_kwargs(batch, model, copies)
            if model.is_causal:
                x = cache[hooks.resid(start, "resid_pre")].repeat(copies, 1, 1)
                out = model.bridge(x, start_at_layer=start, stop_at_layer=stop, **kwargs)
            else:
                out = model.bridge(batch.input_ids.to(device).repeat(copies, 1), stop_at_layer=stop, **kwargs)
            self.forwards += 1
            for k, si in enumerate(chunk):
                pats = {}
                for layer in self.pattern_layers:
                    p = store.get(layer)  # None: a layer before the restart, unchanged (the clean pattern)
                    pats[layer] = clean_pat[layer] if p is None else _copy(p, copies, k)
                if restricted:
                    sel, full = out[k], None
                else:
                    full = _copy(out, copies, k) if plan.needs_logits else None
                    sel = full[batch.sel_b.to(device), batch.sel_t.to(device)] if full is not None else None
                self._record(si, batch.items, plan.values(batch, sel, pats, full))


def _copy(x: torch.Tensor, copies: int, k: int) -> torch.Tensor:
    """Copy ``k`` of a batch stacked ``copies`` times: ``[copy * row, ...] -> [row, ...]``."""
    return einops.rearrange(x, "(copy row) ... -> copy row ...", copy=copies)[k]


def _check_restart(
    model, plan: Plan, batch: Batch, cache, start: int, logits, options: EngineOptions
) -> None:
    """Guard for the fast path: restarting at ``start`` with earlier blocks skipped must reproduce the
    clean logits (it does for the supported architectures; an unknown one fails loudly here)."""
    if not model.is_causal or start == 0 or not plan.needs_logits:
        return
    with skip_blocks(model, start) if options.skip_blocks else contextlib.nullcontext():
        out = model.bridge(
            cache[hooks.resid(start, "resid_pre")], start_at_layer=start, **forward_kwargs(batch, model)
        )
    diff = float((out - logits).abs().max())
    if not diff <= CHECK_TOL:
        raise ProbekitError(
            f"the fast sweep's restart at block {start} does not reproduce the full forward "
            f"(max abs diff {diff:.2g}) for {model.name}",
            fix="use sweep='naive'",
        )


# --------------------------------------------------------------------------------------------------
# hooks that read or freeze patterns and restrict the unembedding


def _freeze_pattern(cache, layer: int, copies: int):
    clean = cache[hooks.pattern(layer)]

    def hook(p, hook):
        return clean.to(p.device, p.dtype).repeat(copies, 1, 1, 1)

    return hooks.pattern(layer), hook


def _capture_pattern(store: dict, layer: int, heads: list[int]):
    idx = torch.tensor(heads, dtype=torch.long)

    def hook(p, hook):
        store[layer] = p[:, idx].detach()
        return p

    return hooks.pattern(layer), hook


def _select_positions(sel_b: torch.Tensor, sel_t: torch.Tensor, copies: int):
    """Unembed only the positions a metric reads: ``[copy * row, pos, d] -> [copy, n_sel, d]``."""

    def hook(x, hook):
        xx = einops.rearrange(x, "(copy row) pos d -> copy row pos d", copy=copies)
        return xx[:, sel_b.to(x.device), sel_t.to(x.device)]

    return hook


# --------------------------------------------------------------------------------------------------
# skipping blocks before the restart layer


class _PassThrough(torch.nn.Module):
    """Stands in for a skipped block: returns its input hidden states unchanged."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states


#: model -> (name of the Hugging Face ModuleList holding the bridge's blocks, whether a block returns a
#: tuple); a cache, keyed weakly so that it never keeps a model alive
_BLOCK_LISTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def block_list(model) -> tuple[torch.nn.ModuleList, bool]:
    """The Hugging Face ModuleList that holds the bridge's blocks, and whether a block returns a tuple."""
    found = _BLOCK_LISTS.get(model)
    if found is not None:
        return model.hf_model.get_submodule(found[0]), found[1]
    first = model.bridge.blocks[0]
    for name, module in model.hf_model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == model.n_layers and module[0] is first:
            seen: list[bool] = []

            def record(mod, args, output, seen=seen):
                seen.append(isinstance(output, tuple))

            handle = first.register_forward_hook(record)
            try:
                with torch.inference_mode():
                    model.bridge(
                        torch.tensor([[model.sink_token_id or 0, model.pad_token_id]], device=model.device)
                    )
            finally:
                handle.remove()
            _BLOCK_LISTS[model] = (name, bool(seen and seen[0]))
            return module, _BLOCK_LISTS[model][1]
    raise ProbekitError(f"cannot find the block list of {model.name}", fix="use sweep='naive'")


@contextlib.contextmanager
def skip_blocks(model, start: int) -> Iterator[None]:
    """Blocks ``0..start-1`` become pass-throughs for the duration (restored even on error)."""
    if start <= 0:
        yield
        return
    layers, as_tuple = block_list(model)
    saved = [layers[i] for i in range(start)]
    try:
        for i in range(start):
            layers[i] = _PassThrough(as_tuple)
        yield
    finally:
        for i, block in enumerate(saved):
            layers[i] = block
