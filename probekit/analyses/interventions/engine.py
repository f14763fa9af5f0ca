"""Causal tests of attention heads: ablation, activation patching and attribution patching.

Attention is correlation, not use: a head "handles subject-verb agreement" only if removing it hurts
what depends on it. This module removes heads and measures the damage.

Where heads are cut
-------------------
Every intervention acts on ``blocks.{l}.attn.hook_z``, the per-**query**-head attention output
``[batch, pos, head, d_head]`` just before the output projection. Under grouped-query attention
(SmolLM2: 9 query heads share 3 key/value heads) ``hook_z`` is still per query head, so each of the 9
heads is ablated on its own. A head is ``(layer, head)``; on the command line ``L.H``.

Ablation methods (``method=``)
-----------------------------
- ``zero``: the head's output is set to 0 at every position.
- ``mean``: replaced by its mean over a reference dataset (default: the dataset itself). For causal
  models the sink position 0 gets the mean of position 0 (the sink sees only itself, so this leaves it
  unchanged) and every other position the mean over all real (non-sink, non-pad) tokens.
- ``resample``: replaced by the head's output on *another* example (Chan et al. 2022's resampling
  ablation): each item gets one donor item (seeded, ``seed=``), drawn among reference items at least as
  long, and all sequences of the item (the good and the bad sentence of a pair) receive the donor's
  first sequence, position by position. If no other item is long enough, the longest is used and the
  positions it lacks get the mean (as in ``mean``).
- ``preserve_patterns=True`` (any method) is *pattern-preserving* ablation: the attention patterns of
  every head are frozen at their clean values, so later heads still attend where they attended on the
  clean input. The measured effect is then what the ablated head contributes through values and the
  residual stream, without knock-on effects that act by re-routing later heads' attention (with
  frozen patterns the ``relation_attention`` knock-on is 0 by construction).

Metrics (``metric=``)
---------------------
Minimal pairs (`probekit.analyses.scoring` conventions): ``accuracy`` (good sentence has the higher total
log-probability), ``margin`` (log-prob difference of the critical word, summed over its tokens) and
``logprob_diff`` (sentence log-prob difference). Only tokens from the first token at which the two
sentences differ enter these sums: the shared prefix contributes identical log-probabilities to both
and cancels, so this is the whole-sentence difference, computed more cheaply.
Sentences with gold arcs (``relation=R``, e.g. ``nsubj``): ``relation_loss`` (mean next-token loss on
the tokens of the *later* word of each R arc, the word a causal model predicts with its partner in
view), ``loss`` (mean next-token loss over the sentence) and ``relation_attention`` (the knock-on on
attention: mean word-level attention, Clark et al. 2019, from the later word of each R arc to the
earlier one, averaged over ``target_heads``, default the 5 heads with the highest clean score;
encoders use dependent -> head). A callable ``fn(logits [B, T, V], input_ids [B, T]) -> [B]`` is a
custom per-sequence metric (an item's value is the mean over its sequences).

Sweeps (``sweep=``)
-------------------
``naive`` is the reference: one ``run_with_hooks`` forward per head (or head set) and batch, the way
`transformer_lens.patching` works. ``fast`` gives the same numbers (max abs diff ~1e-5, from
different matrix shapes) faster:

1. one clean forward per batch caches the residual stream entering every layer needed;
2. ablating a head of layer l only changes blocks >= l, so the forward restarts at block l from the
   cached residual (``start_at_layer``) with blocks 0..l-1 *not executed* (the bridge's
   ``start_at_layer`` alone still runs them and discards the result; we swap them for pass-throughs
   for the duration of the call);
3. several ablated copies are stacked along the batch, each copy ablating a different head or set,
   so one forward serves many heads;
4. sequences are cut after the last position a metric reads, and stored as a prefix trie: the shared
   prefix of a minimal pair (and the sink, and common first words) is computed once, with a 4-D
   attention mask that lets each position see exactly its ancestors and position ids = depth; tries
   are packed into rows of up to 64 tokens (`_Task.make_batch`);
5. the unembedding (49k x 576 for SmolLM2, as costly as 8 blocks per token) runs only at the positions
   a metric reads.

Measured on SmolLM2 (``benchmarks/bench_ablation.py``): about 3x over the naive loop for whole-sentence
metrics on short BLiMP pairs, ~5x on ``template:agreement`` (long shared prefixes) and ~10x for the
critical-word margin alone; per-item values agree to ~1e-5 (float32 rounding of different matrix
shapes; it grows with the number of tokens summed). The first batch of a fast sweep is checked
against a full forward (clean, no ablation); a mismatch above 1e-3 raises instead of returning wrong
numbers. Encoders (bidirectional) get step 3 only.

Patching
--------
`patch_heads` is exact activation patching per head (all positions): run the *corrupted* prompt and
write one head's output from the *clean* prompt into it (Vig et al. 2020; Meng et al. 2022), with the
metric ``logit_diff = log p(good) - log p(bad)`` of the next token. ``sweep="tl"`` calls
`transformer_lens.patching.get_act_patch_attn_head_out_all_pos`; ``fast``/``naive`` use the engine
above (same numbers). `attribution_patch` is the gradient approximation (Nanda 2023; Syed, Rager &
Conmy 2023, arXiv:2310.10348): ``delta M ~= (z_clean - z_corrupt) . dM/dz`` at the corrupted run, for
every head at once from 2 forwards and 1 backward. `compare_patching` reports Spearman correlation and
top-k overlap between the two. `make_patch_pairs` builds clean/corrupted prompts that differ in the
subject's number (from ``template:agreement``), keeping only pairs of equal token length.

Specialists vs random heads
---------------------------
`specialists_vs_random` ablates a given set of k heads together and compares the damage with
``n_draws`` random sets of k heads *matched by layer* (each specialist is replaced by another head of
its own layer; specialists are never drawn): effect size, permutation p-value and a bootstrap CI.

Hooks are attached with the bridge's ``hooks()`` context manager and layer swaps are undone in
``finally`` blocks, so nothing is left behind when a metric raises.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from probekit.data.schema import MinimalPair, Sentence
from probekit.errors import ProbekitError
from probekit.analyses.scoring import as_pairs, check_scorable, encode_pair, pad, score_pairs  # noqa: F401

Head = tuple[int, int]
METHODS = ("zero", "mean", "resample")
PAIR_METRICS = ("accuracy", "margin", "logprob_diff")
SENTENCE_METRICS = ("relation_loss", "loss", "relation_attention")
SWEEPS = ("fast", "naive")
FRAME_COLUMNS = ("model", "layer", "head", "heads", "method", "metric", "clean", "ablated", "delta",
                 "delta_ci_low", "delta_ci_high", "n")
CHECK_TOL = 1e-3
#: The fast sweep's optimisations beyond restarting at the ablated layer; each can be switched off to
#: measure what it buys (``benchmarks/bench_ablation.py``). All are exact up to float rounding.
PACK_WIDTH = 64
FAST_OPTIONS = {"skip_blocks": True, "copies": True, "truncate": True, "pack": True, "restrict_unembed": True}


# --------------------------------------------------------------------------------------------------
# heads


def parse_heads(model, heads) -> list[Head]:
    """``"all"``, ``"L.H,L.H"``, ``[(l, h), ...]`` or ``["L.H", ...]`` -> validated ``[(l, h), ...]``.

    Raises `ProbekitError` for malformed specs and for layers/heads out of range for ``model``.
    """
    if heads is None or (isinstance(heads, str) and heads.strip().lower() == "all"):
        return [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    if isinstance(heads, str):
        heads = [x for x in heads.replace(" ", "").split(",") if x]
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int | np.integer) for x in heads):
        heads = [heads]
    out: list[Head] = []
    for item in heads:
        if isinstance(item, str):
            m = re.fullmatch(r"(-?\d+)\.(-?\d+)", item.strip())
            if not m:
                raise ProbekitError(f"head {item!r} is not LAYER.HEAD", where="heads",
                                    fix="write heads as e.g. 3.1,12.4 (0-based layer and head) or 'all'")
            item = (int(m.group(1)), int(m.group(2)))
        if (not isinstance(item, tuple | list) or len(item) != 2
                or not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in item)):
            raise ProbekitError(f"head {item!r} is not a (layer, head) pair of integers", where="heads",
                                fix="pass e.g. [(3, 1), (12, 4)] or 'all'")
        layer, h = int(item[0]), int(item[1])
        if not 0 <= layer < model.n_layers or not 0 <= h < model.n_heads:
            raise ProbekitError(
                f"head {layer}.{h} is out of range: {model.name} has layers 0..{model.n_layers - 1} and "
                f"heads 0..{model.n_heads - 1} per layer", where="heads",
                fix="use 0-based indices (query heads; under GQA every query head counts)")
        out.append((layer, h))
    if not out:
        raise ProbekitError("no heads were given", where="heads", fix="pass 'all' or some heads")
    return list(dict.fromkeys(out))


def head_label(heads: Iterable[Head]) -> str:
    return "+".join(f"{layer}.{h}" for layer, h in heads)


# --------------------------------------------------------------------------------------------------
# tasks: what is run and what is measured


@dataclass
class _Batch:
    items: list[int]                  # task item indices in this batch
    rows: list[int]                   # task sequence indices (per batch row; first sequence for packed rows)
    row_item: list[int]               # task item of each batch row
    input_ids: torch.Tensor           # [B, T]
    attention_mask: torch.Tensor | None  # None (causal, right padding), [B, T] (encoders) or [B, 1, T, T] bool
    position_ids: torch.Tensor | None    # [B, T] when rows are packed, else None (0..T-1)
    sel_b: torch.Tensor               # positions whose logits are read: batch row ...
    sel_t: torch.Tensor               # ... and position
    ent_sel: torch.Tensor             # per scored entry: index into sel
    ent_tgt: torch.Tensor             # per scored entry: target token
    weights: dict[str, torch.Tensor]  # linear metric -> [n_items_batch, n_entries]
    attn: list[tuple[int, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # attention terms: (item_local, row, query positions, key positions)
    seq_rows: dict[int, int] = field(default_factory=dict)  # task sequence -> batch row
    blocks: list[tuple[int, int, int, int]] = field(default_factory=list)  # (row, start, length, item)


def _first_fit(trees: list, cap: int) -> list[list[tuple[int, tuple]]]:
    """Pack trees ``(item, segments, length)`` into rows of ``cap`` positions: per row ``(start, tree)``."""
    rows: list[list[tuple[int, tuple]]] = []
    free: list[int] = []
    for tree in sorted(trees, key=lambda t: -t[2]):
        k = next((k for k, f in enumerate(free) if f >= tree[2]), None)
        if k is None:
            rows.append([])
            free.append(cap)
            k = len(rows) - 1
        rows[k].append((cap - free[k], tree))
        free[k] -= tree[2]
    return rows


class _Task:
    """Sequences, the items they belong to and the metrics read from a forward pass.

    Linear metrics are sums ``sum_e w[m, item, e] * logprob[e]`` over scored entries ``e`` (a position
    and the token it should predict). ``accuracy`` is derived from ``logprob_diff``; attention metrics
    read captured patterns; custom metrics read full logits.
    """

    derived = {"accuracy": ("logprob_diff", lambda v: (v > 0).astype(np.float64))}

    def __init__(self, model, metrics: Sequence, name: str):
        self.model = model
        self.name = name
        self.seqs: list[tuple[int, ...]] = []
        self.item_rows: list[list[int]] = []
        self.entries: list[list[tuple[int, int, int, dict[str, float]]]] = []  # per item: (seq, t, tgt, w)
        self.attn_terms: list[list[tuple[int, tuple[int, int], tuple[int, int]]]] = []
        self.target_heads: list[Head] = []
        self.shared_prefix: list[int] = []  # per item: tokens its sequences share (pairs), for packing
        self.custom: dict[str, Callable] = {}
        self.metrics: list[str] = []
        for m in metrics:
            if callable(m):
                key = getattr(m, "__name__", "custom")
                self.custom[key] = m
                self.metrics.append(key)
            else:
                self.metrics.append(str(m))

    # -- structure
    @property
    def n_items(self) -> int:
        return len(self.item_rows)

    @property
    def linear_metrics(self) -> list[str]:
        names = set()
        for m in self.metrics:
            names.add(self.derived[m][0] if m in self.derived else m)
        return sorted(n for n in names if n not in self.custom and n != "relation_attention")

    @property
    def needs_full_logits(self) -> bool:
        return bool(self.custom)

    @property
    def needs_logits(self) -> bool:
        return bool(self.linear_metrics or self.custom)

    @property
    def pattern_layers(self) -> list[int]:
        if "relation_attention" not in self.metrics:
            return []
        return sorted({layer for layer, _ in self.target_heads})

    def item_length(self, i: int) -> int:
        return max(len(self.seqs[r]) for r in self.item_rows[i])

    def batches(self, batch_items: int) -> list[list[int]]:
        order = sorted(range(self.n_items), key=lambda i: (self.item_length(i), i))
        return [order[s:s + batch_items] for s in range(0, len(order), batch_items)]

    def needed_length(self, seq: int) -> int:
        """Tokens of ``seq`` a metric depends on: a causal model's later positions can be dropped."""
        if self.custom or not self.model.is_causal:
            return len(self.seqs[seq])
        i = self.seq_item_index()[seq]
        need = 1
        for s_, t, _, _ in self.entries[i]:
            if s_ == seq:
                need = max(need, t + 1)
        for s_, (_, qb), (_, kb) in self.attn_terms[i]:
            if s_ == seq:
                need = max(need, qb, kb)
        return need

    def seq_item_index(self) -> list[int]:
        if getattr(self, "_seq_item", None) is None or len(self._seq_item) != len(self.seqs):
            self._seq_item = [0] * len(self.seqs)
            for i, rows in enumerate(self.item_rows):
                for r in rows:
                    self._seq_item[r] = i
        return self._seq_item

    def make_batch(self, items: list[int], fast: bool = False, share_across_items: bool = True) -> _Batch:
        """Encode ``items``.

        ``fast=False`` is the reference layout: one row per sequence, full length, right-padded.

        ``fast=True`` (causal models) computes the same numbers on fewer positions:

        - each sequence is cut after the last position a metric reads (later tokens cannot matter);
        - sequences are stored as a **prefix trie**: a token is computed once for all sequences that
          share the tokens up to it (the prefix of a minimal pair, the sink, a common first word), with a
          4-D mask that lets a position attend exactly to its ancestors and position ids = depth;
        - tries are packed first-fit into rows (block-diagonal), so there is little padding.

        A causal position depends only on its ancestors, so each logit is the same as in the reference
        layout up to float rounding. Sharing across items is exact when the replacement does not depend
        on the item (zero, mean); ``share_across_items=False`` (resample, patch) shares only within an item.
        """
        model = self.model
        pack = fast and model.is_causal and not self.custom and FAST_OPTIONS["pack"]
        cut = fast and FAST_OPTIONS["truncate"]
        where: dict[int, tuple[int, list[int]]] = {}  # seq -> (row, packed position of each token)
        blocks: list[tuple[int, int, int, int]] = []   # (row, start, length, item) of item-specific blocks
        if pack:
            groups = [[i] for i in items]
            if share_across_items:  # one trie per group of items, groups packed first-fit
                sizes = {i: self._trie_size([(r, self._cut(r, cut)) for r in self.item_rows[i]]) for i in items}
                trees = [(i, None, sizes[i]) for i in items]
                longest = max(sizes.values())
                rows_fit = min((_first_fit(trees, cap) for cap in range(longest, max(longest, PACK_WIDTH) + 1)),
                               key=lambda rows: (len(rows) * max(b + t[2] for row in rows for b, t in row), len(rows)))
                groups = [[t[0] for _, t in row] for row in rows_fit]
            tries = []
            for g in groups:
                seqs = [(r, self._cut(r, cut)) for i in g for r in self.item_rows[i]]
                tries.append((g, *self._trie(seqs)))
            if share_across_items:
                layout = [[(0, t)] for t in tries]
            else:
                longest = max(len(t[1]) for t in tries)
                sized = [(t, None, len(t[1])) for t in tries]
                packed = min((_first_fit(sized, cap) for cap in range(longest, max(longest, PACK_WIDTH) + 1)),
                             key=lambda rows: (len(rows) * max(b + t[2] for row in rows for b, t in row), len(rows)))
                layout = [[(b, t[0]) for b, t in row] for row in packed]
            width = max(base + len(t[1]) for row in layout for base, t in row)
            n_rows = len(layout)
            ids = torch.full((n_rows, width), model.pad_token_id, dtype=torch.long)
            pos = torch.zeros((n_rows, width), dtype=torch.long)
            mask = torch.eye(width, dtype=torch.bool).repeat(n_rows, 1, 1, 1)
            row_item, first_seq = [], []
            for k, row in enumerate(layout):
                row_item.append(row[0][1][0][0])
                first_seq.append(self.item_rows[row[0][1][0][0]][0])
                for base, (g, tokens, depth, anc, paths) in row:
                    n = len(tokens)
                    ids[k, base:base + n] = torch.tensor(tokens, dtype=torch.long)
                    pos[k, base:base + n] = torch.tensor(depth, dtype=torch.long)
                    mask[k, 0, base:base + n, base:base + n] = anc
                    for seq, path in paths.items():
                        where[seq] = (k, [base + x for x in path])
                    if len(g) == 1:
                        blocks.append((k, base, n, g[0]))
        else:
            trees = [(i, r, self._cut(r, cut)) for i in items for r in self.item_rows[i]]
            width = max(n for _, _, n in trees)
            n_rows = len(trees)
            ids = torch.full((n_rows, width), model.pad_token_id, dtype=torch.long)
            pos = None
            mask = None if model.is_causal else torch.zeros((n_rows, width), dtype=torch.long)
            row_item, first_seq = [], []
            for k, (i, r, n) in enumerate(trees):
                ids[k, :n] = torch.tensor(self.seqs[r][:n], dtype=torch.long)
                if mask is not None:
                    mask[k, :n] = 1
                where[r] = (k, list(range(n)))
                row_item.append(i)
                first_seq.append(r)
                blocks.append((k, 0, n, i))

        def place(seq: int, t: int) -> tuple[int, int]:
            row, path = where[seq]
            return row, path[t]

        sel: dict[tuple[int, int], int] = {}
        ent_sel, ent_tgt = [], []
        lin = self.linear_metrics
        w = {m: [] for m in lin}
        for k_item, i in enumerate(items):
            for seq, t, tgt, weights in self.entries[i]:
                key = place(seq, t)
                if key not in sel:
                    sel[key] = len(sel)
                ent_sel.append(sel[key])
                ent_tgt.append(tgt)
                for m in lin:
                    w[m].append((k_item, weights.get(m, 0.0)))
        weights = {}
        for m in lin:
            mat = torch.zeros((len(items), len(ent_sel)), dtype=torch.float64)
            for e, (k_item, val) in enumerate(w[m]):
                mat[k_item, e] = val
            weights[m] = mat
        attn = []
        for k_item, i in enumerate(items):
            for seq, (qa, qb), (ka, kb) in self.attn_terms[i]:
                row, path = where[seq]
                attn.append((k_item, row, torch.tensor(path[qa:qb]), torch.tensor(path[ka:kb])))
        keys = list(sel)
        return _Batch(
            items=list(items), rows=first_seq, row_item=row_item, input_ids=ids, attention_mask=mask,
            position_ids=pos, sel_b=torch.tensor([x[0] for x in keys], dtype=torch.long),
            sel_t=torch.tensor([x[1] for x in keys], dtype=torch.long),
            ent_sel=torch.tensor(ent_sel, dtype=torch.long), ent_tgt=torch.tensor(ent_tgt, dtype=torch.long),
            weights=weights, attn=attn, seq_rows={seq: v[0] for seq, v in where.items()}, blocks=blocks)

    def _cut(self, seq: int, cut: bool) -> int:
        return self.needed_length(seq) if cut else len(self.seqs[seq])

    def _trie_size(self, seqs: list[tuple[int, int]]) -> int:
        return len({tuple(self.seqs[r][:t + 1]) for r, n in seqs for t in range(n)})

    def _trie(self, seqs: list[tuple[int, int]]):
        """A prefix trie of ``(seq, length)``: tokens, depths, ancestor mask ``[n, n]`` and each
        sequence's path (packed position of each of its tokens)."""
        index: dict[tuple[int, int], int] = {}
        tokens, depth, parent = [], [], []
        paths: dict[int, list[int]] = {}
        for r, n in seqs:
            node, path = -1, []
            for t, tok in enumerate(self.seqs[r][:n]):
                key = (node, tok)
                nxt = index.get(key)
                if nxt is None:
                    nxt = len(tokens)
                    index[key] = nxt
                    tokens.append(tok)
                    depth.append(t)
                    parent.append(node)
                node = nxt
                path.append(node)
            paths[r] = path
        anc = torch.zeros((len(tokens), len(tokens)), dtype=torch.bool)
        for j, par in enumerate(parent):  # parents are created before their children
            if par >= 0:
                anc[j] = anc[par]
            anc[j, j] = True
        return tokens, depth, anc, paths

    # -- reading a forward pass
    def values(self, batch: _Batch, sel_logits: torch.Tensor | None, patterns: dict[int, torch.Tensor] | None,
               full_logits: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Per-item metric values for one batch (one ablated copy).

        ``sel_logits``: ``[n_sel, vocab]`` logits at ``(sel_b, sel_t)``; ``patterns``: layer ->
        ``[B, n_target_heads_in_layer, T, T]``; ``full_logits``: ``[B, T, vocab]`` for custom metrics.
        """
        out: dict[str, np.ndarray] = {}
        lin = self.linear_metrics
        if lin:
            x = sel_logits.float()
            lse = torch.logsumexp(x, dim=-1)
            lp = (x[batch.ent_sel, batch.ent_tgt] - lse[batch.ent_sel]).double().cpu()
            for m in lin:
                out[m] = (batch.weights[m] @ lp).numpy()
        for m, fn in self.custom.items():
            per_row = torch.as_tensor(fn(full_logits, batch.input_ids.to(full_logits.device))).detach()
            per_row = per_row.double().cpu().numpy().reshape(-1)
            if per_row.shape[0] != len(batch.rows):
                raise ProbekitError(f"custom metric {m!r} returned {per_row.shape[0]} values for {len(batch.rows)} "
                                    "sequences", fix="return one value per sequence: a [batch] tensor")
            out[m] = np.array([np.mean([per_row[batch.seq_rows[r]] for r in self.item_rows[i]]) for i in batch.items])
        if "relation_attention" in self.metrics:
            out["relation_attention"] = self.attention_values(batch, patterns)
        for m, (src, fn) in self.derived.items():
            if m in self.metrics:
                out[m] = fn(out[src])
        return {m: out[m] for m in self.metrics}

    def attention_values(self, batch: _Batch, patterns: dict[int, torch.Tensor]) -> np.ndarray:
        total = np.zeros(len(batch.items))
        count = np.zeros(len(batch.items))
        heads_by_layer = {layer: [h for lyr, h in self.target_heads if lyr == layer] for layer in self.pattern_layers}
        for layer, p in patterns.items():  # p: [B, n_heads_sel, T, T]
            n_h = len(heads_by_layer[layer])
            pc = p.double().cpu()
            for k_item, row, q_idx, k_idx in batch.attn:
                total[k_item] += float(pc[row][:, q_idx][:, :, k_idx].sum(-1).mean(-1).sum())
                count[k_item] += n_h
        return total / np.maximum(count, 1)


def _pair_task(model, pairs: list[MinimalPair], metrics) -> _Task:
    check_scorable(model)
    task = _Task(model, metrics, "pairs")
    bad = [m for m in task.metrics if m not in PAIR_METRICS and m not in task.custom]
    if bad:
        raise ProbekitError(f"metric {bad[0]!r} does not apply to minimal pairs",
                            fix=f"use some of {PAIR_METRICS} (or a callable)")
    for p in pairs:
        e = encode_pair(model, p)
        g, b = len(task.seqs), len(task.seqs) + 1
        task.seqs += [e.good_ids, e.bad_ids]
        task.item_rows.append([g, b])
        ents = []
        lin = task.linear_metrics
        for seq, ids, span, sign in ((g, e.good_ids, e.good_span, 1.0), (b, e.bad_ids, e.bad_span, -1.0)):
            for t in range(e.start, len(ids)):
                w = {"logprob_diff": sign}
                if span[0] <= t < span[1]:
                    w["margin"] = sign
                w = {m: v for m, v in w.items() if m in lin}
                if w:  # positions no requested metric reads are never computed
                    ents.append((seq, t - 1, ids[t], w))
        task.entries.append(ents)
        task.attn_terms.append([])
        task.shared_prefix.append(e.start)
    return task


def _relation_arcs(sentence: Sentence, relation: str) -> list[tuple[int, int]]:
    from probekit.data import RELATION_ALIASES

    if sentence.heads is None or sentence.deprels is None:
        return []
    rel = RELATION_ALIASES.get(relation, relation)
    labels = (sentence.deprels_full or sentence.deprels) if ":" in rel else sentence.deprels
    return [(i, h) for i, (h, d) in enumerate(zip(sentence.heads, labels)) if h >= 0 and d == rel]


def _sentence_task(model, sentences: list[Sentence], metrics, relation: str | None,
                   target_heads) -> _Task:
    from probekit.activations.align import align

    task = _Task(model, metrics, "sentences")
    bad = [m for m in task.metrics if m not in SENTENCE_METRICS and m not in task.custom]
    if bad:
        raise ProbekitError(f"metric {bad[0]!r} does not apply to sentences",
                            fix=f"use some of {SENTENCE_METRICS} (with relation=...) or a callable")
    if any(m != "relation_attention" for m in task.metrics):
        check_scorable(model)
    needs_rel = [m for m in task.metrics if m in ("relation_loss", "relation_attention")]
    if needs_rel and not relation:
        raise ProbekitError(f"metric {needs_rel[0]!r} needs a relation", fix="pass relation='nsubj' (a UD deprel)")
    kept = []
    for s in sentences:
        arcs = _relation_arcs(s, relation) if relation else []
        if needs_rel and not arcs:
            continue
        enc = align(model, s)
        row = len(task.seqs)
        task.seqs.append(enc.input_ids)
        task.item_rows.append([row])
        ents: dict[int, dict[str, float]] = {}
        if "loss" in task.metrics:
            n = enc.n_tokens - 1 - (0 if model.is_causal else 1)
            for t in range(1, enc.n_tokens - (0 if model.is_causal else 1)):
                ents.setdefault(t, {})["loss"] = -1.0 / n
        if "relation_loss" in task.metrics:
            later = sorted({max(d, h) for d, h in arcs})
            toks = [t for w in later for t in range(*enc.word_spans[w])]
            for t in toks:
                ents.setdefault(t, {})["relation_loss"] = -1.0 / len(toks)
        task.entries.append([(row, t - 1, enc.input_ids[t], w) for t, w in sorted(ents.items())])
        terms = []
        for d, h in arcs:
            src, tgt = (max(d, h), min(d, h)) if model.is_causal else (d, h)
            terms.append((row, enc.word_spans[src], enc.word_spans[tgt]))
        task.attn_terms.append(terms)
        kept.append(s)
    if not kept:
        raise ProbekitError(f"no sentence has a {relation!r} arc" if relation else "no sentences to score",
                            fix="check the relation name (a UD deprel such as nsubj) and the dataset")
    if "relation_attention" in task.metrics:
        task.target_heads = (parse_heads(model, target_heads) if target_heads is not None
                             else _top_relation_heads(model, task, k=5))
    return task


def _top_relation_heads(model, task: _Task, k: int = 5) -> list[Head]:
    """The k heads with the highest clean relation-attention score on the task's sentences."""
    all_heads = parse_heads(model, "all")
    task.target_heads = all_heads
    scores = np.zeros((model.n_layers, model.n_heads))
    count = 0
    with torch.inference_mode():
        for items in task.batches(32):
            batch = task.make_batch(items)
            _, cache = model.bridge.run_with_cache(
                batch.input_ids.to(model.device), **_extra(batch, model),
                names_filter=lambda n: n.endswith("attn.hook_pattern"))
            for _, row, q_idx, k_idx in batch.attn:
                for layer in range(model.n_layers):
                    p = cache[f"blocks.{layer}.attn.hook_pattern"][row][:, q_idx][:, :, k_idx]
                    scores[layer] += p.sum(-1).mean(-1).double().cpu().numpy()
                count += 1
    flat = np.argsort(-scores.ravel(), kind="stable")[:k]
    return [(int(i // model.n_heads), int(i % model.n_heads)) for i in flat]


def _mask(batch: _Batch, model, copies: int = 1):
    m = batch.attention_mask
    if m is None:
        return None
    return m.repeat(copies, *([1] * (m.ndim - 1))).to(model.device)


def _extra(batch: _Batch, model, copies: int = 1) -> dict:
    """Forward kwargs of a batch: its attention mask and, for packed rows, position ids."""
    out = {"attention_mask": _mask(batch, model, copies)}
    if batch.position_ids is not None:
        out["position_ids"] = batch.position_ids.repeat(copies, 1).to(model.device)
    return out


def _default_metrics(dataset, metric) -> list:
    if metric is None:
        if _is_pairs(dataset):
            return list(PAIR_METRICS)
        return ["relation_loss", "relation_attention"]
    if isinstance(metric, str) or callable(metric):
        return [metric]
    return list(metric)


def _is_pairs(dataset) -> bool:
    items = list(getattr(dataset, "items", dataset))
    return bool(items) and all(isinstance(x, MinimalPair) for x in items)


def _make_task(model, dataset, metric, relation=None, target_heads=None, max_items=None) -> _Task:
    items = list(getattr(dataset, "items", dataset))
    if max_items is not None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ProbekitError(f"max_items is {max_items!r}", fix="pass a positive integer, or None for all")
        items = items[:max_items]
    if not items:
        raise ProbekitError("the dataset is empty", fix="pass minimal pairs or sentences")
    metrics = _default_metrics(items, metric)
    if all(isinstance(x, MinimalPair) for x in items):
        return _pair_task(model, items, metrics)
    if all(isinstance(x, Sentence) for x in items):
        if not model.is_causal and metric is None:
            metrics = ["relation_attention"]
        return _sentence_task(model, items, metrics, relation, target_heads)
    raise ProbekitError("the dataset mixes sentences and minimal pairs", fix="ablate on one kind at a time")


# --------------------------------------------------------------------------------------------------
# running the bridge


class _PassThrough(torch.nn.Module):
    """Stands in for a skipped block: returns its input hidden states unchanged."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states


def _block_list(model):
    """The Hugging Face ModuleList that holds the bridge's blocks (cached on the model)."""
    cached = getattr(model, "_pk_block_list", None)
    if cached is not None:
        return cached
    first = model.bridge.blocks[0]
    for module in model.hf_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == model.n_layers and module[0] is first:
            out: list = [module, None]
            seen: list[bool] = []

            def record(mod, args, output, seen=seen):
                seen.append(isinstance(output, tuple))

            handle = first.register_forward_hook(record)
            try:
                with torch.inference_mode():
                    model.bridge(torch.tensor([[model.sink_token_id or 0, model.pad_token_id]], device=model.device))
            finally:
                handle.remove()
            out[1] = bool(seen and seen[0])
            model._pk_block_list = out
            return out
    raise ProbekitError(f"cannot find the block list of {model.name}", fix="use sweep='naive'")


@contextlib.contextmanager
def _skip_blocks(model, start: int):
    """Blocks 0..start-1 become pass-throughs for the duration (restored even on error)."""
    if start <= 0 or not FAST_OPTIONS["skip_blocks"]:
        yield
        return
    layers, as_tuple = _block_list(model)
    saved = [layers[i] for i in range(start)]
    try:
        for i in range(start):
            layers[i] = _PassThrough(as_tuple)
        yield
    finally:
        for i, block in enumerate(saved):
            layers[i] = block


def _z_hook_single(heads: list[int], rep: torch.Tensor | None):
    """Naive hook: set ``z[:, :, heads]`` to the replacement (0 when ``rep`` is None)."""
    idx = torch.tensor(heads, dtype=torch.long)

    def hook(z, hook):
        if rep is None:
            z[:, :, idx] = 0.0
        else:
            z[:, :, idx] = rep[:, : z.shape[1]][:, :, idx].to(z.dtype).expand(z.shape[0], -1, -1, -1)
        return z

    return hook


def _z_hook_copies(mask: torch.Tensor, rep: torch.Tensor | None, copies: int):
    """Fast hook: copy c of a ``[c*B, T, H, d]`` z gets the replacement where ``mask[c, h]``."""

    def hook(z, hook):
        if not z.is_contiguous():
            z = z.contiguous()
        c_b, t, h, d = z.shape
        zz = z.view(copies, c_b // copies, t, h, d)
        m = mask.to(z.device)[:, None, None, :, None]
        if rep is None:
            zz.masked_fill_(m, 0.0)
        else:
            r = rep[:, :t].to(z.device, z.dtype)
            zz.copy_(torch.where(m, r.unsqueeze(0).expand_as(zz), zz))
        return z

    return hook


def _pattern_freeze_hook(clean: torch.Tensor, copies: int):
    def hook(p, hook):
        return clean.to(p.device, p.dtype).repeat(copies, 1, 1, 1)

    return hook


def _pattern_capture_hook(store: dict, layer: int, heads: list[int]):
    idx = torch.tensor(heads, dtype=torch.long)

    def hook(p, hook):
        store[layer] = p[:, idx].detach()
        return p

    return hook


def _select_hook(sel_b: torch.Tensor, sel_t: torch.Tensor, copies: int):
    """Unembed only the positions a metric reads: ``[c*B, T, d] -> [c, n_sel, d]``."""

    def hook(x, hook):
        c_b, t, d = x.shape
        xx = x.view(copies, c_b // copies, t, d)
        return xx[:, sel_b.to(x.device), sel_t.to(x.device)]

    return hook


# --------------------------------------------------------------------------------------------------
# replacement values for mean / resample / patch


def _collect_z(model, seqs: list[tuple[int, ...]], layers: list[int], batch_size: int = 64) -> list[torch.Tensor]:
    """``hook_z`` of every sequence at ``layers``: one ``[len(layers), T, H, d_head]`` tensor each (CPU)."""
    out: list[torch.Tensor | None] = [None] * len(seqs)
    names = {f"blocks.{layer}.attn.hook_z" for layer in layers}
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids = pad([seqs[i] for i in idx], model.pad_token_id).to(model.device)
            mask = None
            if not model.is_causal:
                mask = torch.zeros_like(ids)
                for k, i in enumerate(idx):
                    mask[k, : len(seqs[i])] = 1
            _, cache = model.bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in names,
                                                   stop_at_layer=_stop(model, layers))
            stacked = torch.stack([cache[f"blocks.{layer}.attn.hook_z"] for layer in layers], dim=1).cpu()
            for k, i in enumerate(idx):
                out[i] = stacked[k, :, : len(seqs[i])].clone()
    return out  # type: ignore[return-value]


def _stop(model, layers: list[int]) -> int | None:
    stop = max(layers) + 1
    return stop if stop < model.n_layers else None


class _Replacer:
    """What an ablated head's output becomes, per batch and layer: ``[B or 1, T, H, d_head]`` or None (zero)."""

    def __init__(self, model, task: _Task, method: str, layers: list[int], *, reference=None, seed: int = 0,
                 donor_seqs: list[tuple[int, ...]] | None = None):
        self.model, self.task, self.method = model, task, method
        self.layers = sorted(set(layers))
        self.lidx = {layer: k for k, layer in enumerate(self.layers)}
        self.donor_of_item: list[int] = []   # per task item: index into _donor_seqs
        self._donor_seqs: list[tuple[int, ...]] = []
        self._donor_batch: object = None
        self.donor_z: dict[int, torch.Tensor] = {}  # donor index -> [layers, T, H, d_head], current batch only
        self.mean_tok = self.mean_sink = None
        if method == "zero":
            return
        if method == "patch":  # item i takes its activations from donor_seqs[i] (the clean prompt)
            if donor_seqs is None or len(donor_seqs) != task.n_items:
                raise ValueError("patch needs one donor sequence per item")
            self._donor_seqs = list(donor_seqs)
            self.donor_of_item = list(range(task.n_items))
            return
        if method not in ("mean", "resample"):
            raise ProbekitError(f"unknown ablation method {method!r}", fix=f"use one of {METHODS}")
        if reference is None:
            ref_seqs, ref_items = task.seqs, task.item_rows
        else:
            ref_task = _make_task(model, reference, metric=None if _is_pairs(reference) else ["loss"],
                                  relation=None) if model.is_causal else None
            if ref_task is None:  # encoders: align the reference sentences directly
                from probekit.activations.align import align

                ref_seqs = [align(model, s).input_ids for s in getattr(reference, "sentences", reference)]
                ref_items = [[i] for i in range(len(ref_seqs))]
            else:
                ref_seqs, ref_items = ref_task.seqs, ref_task.item_rows
        self._means(ref_seqs)
        if method == "resample":
            firsts = [rows[0] for rows in ref_items]
            lengths = np.array([len(ref_seqs[r]) for r in firsts])
            rng = np.random.default_rng(seed)
            for i in range(task.n_items):
                need = task.item_length(i)
                others = np.array([j for j in range(len(firsts)) if not (reference is None and j == i)])
                if others.size == 0:
                    raise ProbekitError("resample ablation needs at least two items",
                                        fix="use more items or another method")
                ok = others[lengths[others] >= need]
                if ok.size:
                    j = int(rng.choice(ok))
                else:  # nothing long enough: the longest other item, mean-filled beyond its end
                    j = int(others[np.argmax(lengths[others])])
                    rng.random()
                self.donor_of_item.append(j)
            self.donor_items = list(self.donor_of_item)  # reference item each task item draws from
            # donor activations are computed per batch, for that batch's donors only (bounded memory)
            self._donor_seqs = [ref_seqs[firsts[j]] for j in range(len(firsts))]

    def _means(self, seqs: list[tuple[int, ...]], chunk: int = 256) -> None:
        """Mean head outputs over the reference, accumulated in float64 chunk by chunk (bounded memory)."""
        skip_sink = 1 if self.model.is_causal else 0
        tok = sink = None
        n_tok = 0
        for s in range(0, len(seqs), chunk):
            z = _collect_z(self.model, seqs[s:s + chunk], self.layers)
            t = sum(x[:, skip_sink:].double().sum(1) for x in z)
            k = sum(x[:, 0].double() for x in z)
            tok = t if tok is None else tok + t
            sink = k if sink is None else sink + k
            n_tok += sum(max(0, x.shape[1] - skip_sink) for x in z)
        self.mean_tok = (tok / max(n_tok, 1)).float()                  # [L, H, d]
        self.mean_sink = (sink / len(seqs)).float() if skip_sink else self.mean_tok

    def rep(self, batch: _Batch, layer: int, width: int) -> torch.Tensor | None:
        """``[B or 1, width, H, d_head]``: what the ablated heads' outputs become in this batch."""
        if self.method == "zero":
            return None
        k = self.lidx[layer]
        pos = batch.position_ids
        if self.method == "mean":
            if pos is None:
                out = self.mean_tok[k].unsqueeze(0).unsqueeze(0).repeat(1, width, 1, 1)
                out[:, 0] = self.mean_sink[k]
            else:
                out = self.mean_tok[k].expand(pos.shape[0], width, -1, -1).clone()
                out[pos[:, :width] == 0] = self.mean_sink[k]
            return out
        if self._donor_batch is not batch:
            need = sorted({self.donor_of_item[item] for _, _, _, item in batch.blocks})
            self.donor_z = dict(zip(need, _collect_z(self.model, [self._donor_seqs[j] for j in need], self.layers)))
            self._donor_batch = batch
        h, d = self.model.n_heads, self.model.d_head
        out = torch.zeros((batch.input_ids.shape[0], width, h, d))
        for row, base, n, item in batch.blocks:
            donor = self.donor_z[self.donor_of_item[item]][k]  # [T_d, H, d]
            p = torch.arange(n) if pos is None else pos[row, base:base + n]
            ok = p < donor.shape[0]
            seg = out[row, base:base + n]
            seg[ok] = donor[p[ok]]
            if (~ok).any() and self.mean_tok is not None:
                seg[~ok] = self.mean_tok[k]
        return out


# --------------------------------------------------------------------------------------------------
# the engine


@dataclass
class _SweepResult:
    clean: dict[str, np.ndarray]
    ablated: list[dict[str, np.ndarray]]
    seconds: float = 0.0
    forwards: int = 0


def _spec_layers(spec: Sequence[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, h in spec:
        out.setdefault(layer, []).append(h)
    return out


def _run(model, task: _Task, specs: list[list[Head]], replacer: _Replacer, *, sweep: str = "fast",
         preserve_patterns: bool = False, batch_items: int | None = None, max_tokens: int = 2048,
         progress: bool = False, check: bool = True) -> _SweepResult:
    """Evaluate the task clean and under every ablation spec (a list of heads ablated together)."""
    from tqdm.auto import tqdm

    if sweep not in SWEEPS:
        raise ProbekitError(f"unknown sweep {sweep!r}", fix=f"use one of {SWEEPS}")
    if batch_items is None:  # about 512 tokens per clean forward; fast sweeps stack copies up to max_tokens
        longest = max(task.item_length(i) for i in range(task.n_items))
        batch_items = max(1, 512 // (max(len(r) for r in task.item_rows) * longest))
    if not isinstance(batch_items, int) or batch_items < 1:
        raise ProbekitError(f"batch_size must be a positive integer, not {batch_items!r}")
    n = task.n_items
    clean = {m: np.zeros(n) for m in task.metrics}
    ablated = [{m: np.zeros(n) for m in task.metrics} for _ in specs]
    bridge, device = model.bridge, model.device
    t0 = time.perf_counter()
    forwards = 0
    batches = task.batches(batch_items)
    bar = tqdm(total=len(batches) * len(specs), desc=f"ablate {model.name} ({sweep})", unit="ablation",
               disable=not progress, leave=False)
    pat_layers = task.pattern_layers
    heads_by_layer = {layer: [h for lyr, h in task.target_heads if lyr == layer] for layer in pat_layers}
    stop = None  # attention-only metrics: nothing after the last pattern layer matters
    if not task.needs_logits and pat_layers and max(pat_layers) + 1 < model.n_layers:
        stop = max(pat_layers) + 1
    with torch.inference_mode():
        for b_index, items in enumerate(batches):
            batch = task.make_batch(items, fast=sweep == "fast", share_across_items=replacer.method in ("zero", "mean"))
            ids = batch.input_ids.to(device)
            width = ids.shape[1]
            starts = sorted({min(layer for layer, _ in spec) for spec in specs}) if sweep == "fast" else []
            names = set()
            if sweep == "fast" and model.is_causal:
                names |= {f"blocks.{s}.hook_resid_pre" for s in starts if stop is None or s < stop}
            if preserve_patterns or pat_layers:
                names |= {f"blocks.{layer}.attn.hook_pattern" for layer in range(stop or model.n_layers)}
            logits, cache = bridge.run_with_cache(ids, names_filter=names.__contains__, stop_at_layer=stop,
                                                  **_extra(batch, model))
            forwards += 1
            clean_pat = {layer: cache[f"blocks.{layer}.attn.hook_pattern"][:, heads_by_layer[layer]]
                         for layer in pat_layers}
            sel_clean = logits[batch.sel_b.to(device), batch.sel_t.to(device)] if task.needs_logits else None
            vals = task.values(batch, sel_clean, clean_pat, logits)
            for m in task.metrics:
                clean[m][items] = vals[m]
            reps: dict[int, torch.Tensor | None] = {}

            def rep(layer, batch=batch, width=width, reps=reps):
                if layer not in reps:
                    reps[layer] = replacer.rep(batch, layer, width)
                return reps[layer]

            if sweep == "naive":
                for si, spec in enumerate(specs):
                    hooks = [(f"blocks.{layer}.attn.hook_z", _z_hook_single(hs, rep(layer)))
                             for layer, hs in _spec_layers(spec).items()]
                    store: dict[int, torch.Tensor] = {}
                    if preserve_patterns:
                        hooks += [(f"blocks.{layer}.attn.hook_pattern",
                                   _pattern_freeze_hook(cache[f"blocks.{layer}.attn.hook_pattern"], 1))
                                  for layer in range(model.n_layers)]
                    hooks += [(f"blocks.{layer}.attn.hook_pattern", _pattern_capture_hook(store, layer, heads_by_layer[layer]))
                              for layer in pat_layers]
                    if preserve_patterns and stop is not None:
                        hooks = [hk for hk in hooks if int(hk[0].split(".")[1]) < stop]
                    with bridge.hooks(fwd_hooks=hooks):
                        out = bridge(ids, stop_at_layer=stop, **_extra(batch, model))
                        forwards += 1
                        sel = out[batch.sel_b.to(device), batch.sel_t.to(device)] if task.needs_logits else None
                        vals = task.values(batch, sel, store, out)
                    for m in task.metrics:
                        ablated[si][m][items] = vals[m]
                    bar.update(1)
                continue

            # fast: group specs by the first layer they touch, stack copies along the batch
            n_rows = ids.shape[0]
            per_copy = max(1, max_tokens // max(1, n_rows * width)) if FAST_OPTIONS["copies"] else 1
            by_start: dict[int, list[int]] = {}
            for si, spec in enumerate(specs):
                by_start.setdefault(min(layer for layer, _ in spec), []).append(si)
            if check and b_index == 0 and by_start:
                _check_restart(model, task, batch, cache, max(by_start), logits)
            for start in [s for s in list(by_start) if stop is not None and s >= stop]:
                for si in by_start.pop(start):  # cannot reach the patterns that are read: unchanged
                    for m in task.metrics:
                        ablated[si][m][items] = clean[m][items]
                    bar.update(1)
            for start, members in sorted(by_start.items()):
                for c0 in range(0, len(members), per_copy):
                    chunk = members[c0:c0 + per_copy]
                    copies = len(chunk)
                    masks: dict[int, torch.Tensor] = {}
                    for k, si in enumerate(chunk):
                        for layer, hs in _spec_layers(specs[si]).items():
                            masks.setdefault(layer, torch.zeros((copies, model.n_heads), dtype=torch.bool))[k, hs] = True
                    hooks = [(f"blocks.{layer}.attn.hook_z", _z_hook_copies(mk, rep(layer), copies))
                             for layer, mk in masks.items()]
                    store = {}
                    if preserve_patterns:
                        hooks += [(f"blocks.{layer}.attn.hook_pattern",
                                   _pattern_freeze_hook(cache[f"blocks.{layer}.attn.hook_pattern"], copies))
                                  for layer in range(start, stop or model.n_layers)]
                    hooks += [(f"blocks.{layer}.attn.hook_pattern", _pattern_capture_hook(store, layer, heads_by_layer[layer]))
                              for layer in pat_layers if layer >= start or not model.is_causal]
                    restricted = task.needs_logits and not task.needs_full_logits and FAST_OPTIONS["restrict_unembed"]
                    if restricted:
                        hooks.append(("unembed.hook_in", _select_hook(batch.sel_b, batch.sel_t, copies)))
                    with contextlib.ExitStack() as stack:
                        if model.is_causal:
                            stack.enter_context(_skip_blocks(model, start))
                        stack.enter_context(bridge.hooks(fwd_hooks=hooks))
                        if model.is_causal:
                            x = cache[f"blocks.{start}.hook_resid_pre"].repeat(copies, 1, 1)
                            out = bridge(x, start_at_layer=start, stop_at_layer=stop, **_extra(batch, model, copies))
                        else:
                            out = bridge(ids.repeat(copies, 1), stop_at_layer=stop, **_extra(batch, model, copies))
                        forwards += 1
                        for k, si in enumerate(chunk):
                            pats = {}
                            for layer in pat_layers:
                                p = store.get(layer)
                                if p is None:  # layer before the restart: unchanged, the clean pattern
                                    pats[layer] = clean_pat[layer]
                                else:
                                    pats[layer] = p.view(copies, n_rows, *p.shape[1:])[k]
                            if restricted:
                                sel = out[k]
                                full = None
                            else:
                                full = out.view(copies, n_rows, *out.shape[1:])[k] if task.needs_logits else None
                                sel = full[batch.sel_b.to(device), batch.sel_t.to(device)] if full is not None else None
                            vals = task.values(batch, sel, pats, full)
                            for m in task.metrics:
                                ablated[si][m][items] = vals[m]
                    bar.update(copies)
    bar.close()
    return _SweepResult(clean, ablated, time.perf_counter() - t0, forwards)


def _check_restart(model, task: _Task, batch: _Batch, cache, start: int, logits: torch.Tensor) -> None:
    """Guard for the fast path: restarting at ``start`` with earlier blocks skipped must reproduce the
    clean logits (it does for the supported architectures; an unknown one fails loudly here)."""
    if not model.is_causal or start == 0 or not task.needs_logits:
        return
    with _skip_blocks(model, start):
        out = model.bridge(cache[f"blocks.{start}.hook_resid_pre"], start_at_layer=start, **_extra(batch, model))
    diff = float((out - logits).abs().max())
    if not diff <= CHECK_TOL:
        raise ProbekitError(f"the fast sweep's restart at block {start} does not reproduce the full forward "
                            f"(max abs diff {diff:.2g}) for {model.name}", fix="use sweep='naive'")


# --------------------------------------------------------------------------------------------------
# public API: ablation


def _check_preserve(model, preserve_patterns: bool) -> None:
    if preserve_patterns and not model.is_causal:
        raise ProbekitError(f"pattern-preserving ablation is not available for {model.name}: its attention runs "
                            "inside the Hugging Face module, so an edited hook_pattern does not reach the output",
                            fix="use preserve_patterns=False for encoders")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ProbekitError(f"unknown ablation method {method!r}", fix=f"use one of {', '.join(METHODS)}")


def _frame(model, task: _Task, specs: list[list[Head]], res: _SweepResult, method: str, *, n_boot: int,
           seed: int, single: bool) -> pd.DataFrame:
    from probekit.stats import bootstrap_ci

    rows = []
    for si, spec in enumerate(specs):
        for m in task.metrics:
            c, a = res.clean[m], res.ablated[si][m]
            delta = a - c
            ok = ~np.isnan(delta)
            lo, hi = bootstrap_ci(delta[ok], n_boot=n_boot, seed=seed) if ok.sum() > 1 else (np.nan, np.nan)
            rows.append({
                "model": model.name,
                "layer": spec[0][0] if single else -1, "head": spec[0][1] if single else -1,
                "heads": head_label(spec), "method": method, "metric": m,
                "clean": float(np.nanmean(c)), "ablated": float(np.nanmean(a)), "delta": float(np.nanmean(delta)),
                "delta_ci_low": lo, "delta_ci_high": hi, "n": int(ok.sum()),
            })
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


def ablate_heads(model, dataset, heads="all", method: str = "zero", metric=None, *, joint: bool = False,
                 sweep: str = "fast", reference=None, seed: int = 0, preserve_patterns: bool = False,
                 relation: str | None = None, target_heads=None, max_items: int | None = None,
                 batch_size: int | None = None, max_tokens: int = 2048, n_boot: int = 1000,
                 progress: bool = False) -> pd.DataFrame:
    """Ablate each head in ``heads`` (or, with ``joint=True``, all of them together) and measure.

    Args:
        model: a `probekit.Model`.
        dataset: minimal pairs (BLiMP, ``template:agreement``) or sentences with gold arcs.
        heads: ``"all"``, ``"L.H,..."`` or ``[(layer, head), ...]`` (query heads).
        method: ``zero``, ``mean`` or ``resample`` (see the module docstring); ``reference`` is the
            dataset means/donors come from (default: ``dataset``), ``seed`` seeds the donors.
        metric: a name or list of names (default: ``accuracy, margin, logprob_diff`` for pairs,
            ``relation_loss, relation_attention`` for sentences; needs ``relation=``), or a callable.
        sweep: ``fast`` (default) or ``naive``, same numbers.
        preserve_patterns: freeze all attention patterns at their clean values.
        target_heads: heads whose attention ``relation_attention`` reads (default: top 5 clean).
        max_items: use the first N pairs/sentences.
        batch_size: items per forward (default: about 256 sequences' worth); ``max_tokens`` caps the
            tokens of one fast forward (copies x rows x width).

    Returns a frame with one row per (head, metric): ``model, layer, head, heads, method, metric,
    clean, ablated, delta, delta_ci_low, delta_ci_high, n``; ``delta = ablated - clean`` (mean over
    items) with a 95% bootstrap CI over items. Joint ablation has ``layer = head = -1`` and the set in
    ``heads`` (``"3.1+12.4"``).
    """
    _check_method(method)
    _check_preserve(model, preserve_patterns)
    task = _make_task(model, dataset, metric, relation, target_heads, max_items)
    hs = parse_heads(model, heads)
    specs = [hs] if joint else [[h] for h in hs]
    replacer = _Replacer(model, task, method, [layer for spec in specs for layer, _ in spec],
                         reference=reference, seed=seed)
    res = _run(model, task, specs, replacer, sweep=sweep, preserve_patterns=preserve_patterns,
               batch_items=batch_size, max_tokens=max_tokens, progress=progress)
    df = _frame(model, task, specs, res, method, n_boot=n_boot, seed=seed, single=not joint)
    df.attrs.update({"seconds": res.seconds, "forwards": res.forwards, "sweep": sweep,
                     "preserve_patterns": preserve_patterns,
                     "target_heads": head_label(task.target_heads) if task.target_heads else ""})
    return df


def ablate_head_sets(model, dataset, head_sets: Sequence, method: str = "zero", metric=None, *,
                     sweep: str = "fast", reference=None, seed: int = 0, preserve_patterns: bool = False,
                     relation: str | None = None, target_heads=None, max_items: int | None = None,
                     batch_size: int | None = None, max_tokens: int = 2048, n_boot: int = 1000,
                     progress: bool = False, per_item: bool = False):
    """Ablate each set of heads jointly; one row per (set, metric), ``heads`` names the set.

    With ``per_item=True`` also returns ``(clean, ablated)`` per-item arrays: ``clean[metric]`` is
    ``[n_items]``, ``ablated[metric]`` is ``[n_sets, n_items]``.
    """
    _check_method(method)
    _check_preserve(model, preserve_patterns)
    task = _make_task(model, dataset, metric, relation, target_heads, max_items)
    specs = [parse_heads(model, s) for s in head_sets]
    replacer = _Replacer(model, task, method, [layer for spec in specs for layer, _ in spec],
                         reference=reference, seed=seed)
    res = _run(model, task, specs, replacer, sweep=sweep, preserve_patterns=preserve_patterns,
               batch_items=batch_size, max_tokens=max_tokens, progress=progress)
    df = _frame(model, task, specs, res, method, n_boot=n_boot, seed=seed, single=False)
    df.attrs.update({"seconds": res.seconds, "forwards": res.forwards, "sweep": sweep})
    if per_item:
        abl = {m: np.stack([a[m] for a in res.ablated]) for m in task.metrics}
        return df, res.clean, abl
    return df


@contextlib.contextmanager
def ablated(model, heads, method: str = "zero", *, reference=None):
    """Context manager: inside it every forward of ``model.bridge`` runs with ``heads`` ablated.

    Only ``zero`` and ``mean`` (means over ``reference``, required) make sense outside a dataset;
    ``resample`` needs per-example donors, use `ablate_heads`. Hooks are removed on exit, also on error::

        with ablated(model, [(3, 1)]):
            logits = model.bridge(ids)
    """
    hs = parse_heads(model, heads)
    if method not in ("zero", "mean"):
        raise ProbekitError(f"ablated() supports zero and mean, not {method!r}",
                            fix="use ablate_heads(..., method='resample') for resampling")
    layers = sorted({layer for layer, _ in hs})
    means = None
    if method == "mean":
        if reference is None:
            raise ProbekitError("mean ablation needs a reference dataset", fix="pass reference=dataset")
        task = _make_task(model, reference, None if _is_pairs(reference) else ["loss"])
        means = _Replacer(model, task, "mean", layers)
    hooks = []
    for layer, h_list in _spec_layers(hs).items():
        idx = torch.tensor(h_list, dtype=torch.long)

        def hook(z, hook, idx=idx, layer=layer):
            if means is None:
                z[:, :, idx] = 0.0
            else:
                k = means.lidx[layer]
                z[:, :, idx] = means.mean_tok[k][idx].to(z.dtype)
                if model.is_causal:
                    z[:, 0, idx] = means.mean_sink[k][idx].to(z.dtype)
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    with model.bridge.hooks(fwd_hooks=hooks):
        yield model


# --------------------------------------------------------------------------------------------------
# specialists vs random heads


def matched_random_sets(model, heads: Sequence[Head], n_draws: int, seed: int = 0) -> list[list[Head]]:
    """``n_draws`` random head sets, each with as many heads per layer as ``heads`` has, never a specialist."""
    hs = parse_heads(model, heads)
    per_layer = _spec_layers(hs)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        draw = []
        for layer, spec_heads in sorted(per_layer.items()):
            pool = [h for h in range(model.n_heads) if h not in spec_heads]
            if len(pool) < len(spec_heads):
                raise ProbekitError(f"layer {layer} has {len(pool)} non-specialist heads, {len(spec_heads)} are needed",
                                    fix="pass fewer specialists per layer")
            draw += [(layer, int(h)) for h in sorted(rng.choice(pool, size=len(spec_heads), replace=False))]
        draws.append(draw)
    return draws


def specialists_vs_random(model, dataset, heads: Sequence[Head], *, n_draws: int = 100, seed: int = 0,
                          method: str = "zero", metric=None, alternative: str = "less", sweep: str = "fast",
                          reference=None, max_items: int | None = None, batch_size: int | None = None,
                          max_tokens: int = 2048, n_boot: int = 1000, progress: bool = False,
                          return_draws: bool = False):
    """Is ablating the given k heads worse than ablating k random heads from the same layers?

    The specialists are ablated together, then ``n_draws`` layer-matched random sets
    (`matched_random_sets`), each ablated together, on the same items. Per metric:

    - ``specialists_delta``: mean change (ablated - clean) with the specialists removed;
    - ``random_mean_delta``, ``random_sd``, ``random_q025``/``random_q975``: the distribution over draws;
    - ``effect_size``: ``(specialists_delta - random_mean_delta) / random_sd`` (a z-score against the
      random-set distribution);
    - ``p_value``: permutation p-value of the specialists among the draws, ``(1 + #{draws at least as
      extreme}) / (1 + n_draws)`` (`probekit.stats.empirical_p`); ``alternative="less"`` (default)
      asks whether the specialists' ablation lowers the metric more than random heads';
    - ``diff_ci_low``/``diff_ci_high``: 95% bootstrap CI over items of the per-item difference
      ``delta_specialists - mean_draws(delta_random)``.

    With ``return_draws=True`` also returns the per-draw frame (``draw, heads, metric, delta``).
    """
    from probekit.stats import bootstrap_ci, empirical_p

    if not isinstance(n_draws, int) or n_draws < 2:
        raise ProbekitError(f"n_draws must be an integer >= 2, not {n_draws!r}", fix="e.g. n_draws=100")
    spec = parse_heads(model, heads)
    draws = matched_random_sets(model, spec, n_draws, seed=seed)
    _, clean, abl = ablate_head_sets(model, dataset, [spec, *draws], method=method, metric=metric, sweep=sweep,
                                     reference=reference, seed=seed, max_items=max_items, batch_size=batch_size,
                                     max_tokens=max_tokens, n_boot=10, progress=progress, per_item=True)
    rows, draw_rows = [], []
    for m in clean:
        d_items = abl[m] - clean[m][None]           # [1 + n_draws, n_items]
        d_spec, d_rand = d_items[0], d_items[1:]
        spec_delta = float(d_spec.mean())
        rand = d_rand.mean(axis=1)
        diff_items = d_spec - d_rand.mean(axis=0)
        lo, hi = bootstrap_ci(diff_items, n_boot=n_boot, seed=seed)
        sd = float(rand.std(ddof=1))
        rows.append({
            "model": model.name, "heads": head_label(spec), "k": len(spec), "method": method, "metric": m,
            "clean": float(clean[m].mean()), "specialists_delta": spec_delta,
            "random_mean_delta": float(rand.mean()), "random_sd": sd,
            "random_q025": float(np.quantile(rand, 0.025)), "random_q975": float(np.quantile(rand, 0.975)),
            "effect_size": (spec_delta - float(rand.mean())) / sd if sd > 0 else np.nan,
            "p_value": empirical_p(spec_delta, rand, alternative=alternative), "alternative": alternative,
            "diff_ci_low": lo, "diff_ci_high": hi, "n_items": int(d_spec.size), "n_draws": n_draws,
        })
        for k, (dset, val) in enumerate(zip(draws, rand)):
            draw_rows.append({"draw": k, "heads": head_label(dset), "metric": m, "delta": float(val)})
    out = pd.DataFrame(rows)
    return (out, pd.DataFrame(draw_rows)) if return_draws else out


# --------------------------------------------------------------------------------------------------
# patching


@dataclass
class PatchPairs:
    """Clean and corrupted prompts of equal token length, and the two answer tokens.

    The metric is ``logit_diff = log p(good) - log p(bad)`` of the next token after the prompt
    (the first token of each answer word). ``dropped`` counts the pairs left out, by reason.
    """

    ids: list[str]
    clean: list[tuple[int, ...]]
    corrupted: list[tuple[int, ...]]
    good: list[int]
    bad: list[int]
    labels: list[dict] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_strings(cls, model, clean: Sequence[str], corrupted: Sequence[str], good: Sequence[str],
                     bad: Sequence[str], ids: Sequence[str] | None = None, labels: Sequence[dict] | None = None):
        """Build from prompt strings (the sink token is prepended) and answer words (a leading space is
        added for space-prefix tokenizers). Pairs whose prompts differ in token length, or whose
        answers share their first token, are dropped and counted."""

        if not model.is_causal:
            check_scorable(model)
        if not (len(clean) == len(corrupted) == len(good) == len(bad)):
            raise ProbekitError("clean, corrupted, good and bad must have the same length")
        tok = model.tokenizer
        space = " " if model.space_prefix else ""
        ids = list(ids) if ids is not None else [f"p{i}" for i in range(len(clean))]
        labels = list(labels) if labels is not None else [{} for _ in clean]
        out = cls([], [], [], [], [], [], {})
        for pid, c, x, g, b, lab in zip(ids, clean, corrupted, good, bad, labels):
            c_ids = (model.sink_token_id, *tok(c, add_special_tokens=False).input_ids)
            x_ids = (model.sink_token_id, *tok(x, add_special_tokens=False).input_ids)
            g_ids = tok(space + g, add_special_tokens=False).input_ids
            b_ids = tok(space + b, add_special_tokens=False).input_ids
            if len(c_ids) != len(x_ids):
                out.dropped["different token length"] = out.dropped.get("different token length", 0) + 1
                continue
            if not g_ids or not b_ids or g_ids[0] == b_ids[0]:
                out.dropped["answers share their first token"] = out.dropped.get("answers share their first token", 0) + 1
                continue
            out.ids.append(pid)
            out.clean.append(c_ids)
            out.corrupted.append(x_ids)
            out.good.append(int(g_ids[0]))
            out.bad.append(int(b_ids[0]))
            out.labels.append(dict(lab))
        if not out.ids:
            raise ProbekitError(f"no usable clean/corrupted pairs (dropped: {out.dropped})",
                                fix="clean and corrupted prompts need the same number of tokens")
        return out


def _number_swaps() -> dict[str, str]:
    from probekit.data.templates import vocab

    swaps = {}
    for noun in vocab()["nouns"]:
        if noun.get("sg") and noun.get("pl") and noun["sg"] != noun["pl"]:
            swaps[noun["sg"]] = noun["pl"]
            swaps[noun["pl"]] = noun["sg"]
    return swaps


def make_patch_pairs(model, dataset, *, swap: dict[str, str] | None = None,
                     max_pairs: int | None = None) -> PatchPairs:
    """Clean/corrupted prompts from subject-verb agreement pairs (``template:agreement``).

    Clean prompt: the pair's prefix ("The key near the cabinets"); corrupted: the same with the
    subject (word ``subject_index``) in the other number ("The keys near the cabinets"); answers: the
    good and bad verb. ``swap`` maps each noun form to the other number (default: the template
    vocabulary). Pairs without ``subject_index``, with a subject not in ``swap`` or with prompts of
    different token length are dropped (counted in ``dropped``).
    """
    pairs = as_pairs(dataset)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    swap = swap if swap is not None else _number_swaps()
    clean, corrupted, good, bad, ids, labels = [], [], [], [], [], []
    dropped: dict[str, int] = {}
    for p in pairs:
        words = p.prefix.split()
        si = p.subject_index
        if si is None or not 0 <= si < len(words):
            dropped["no subject_index"] = dropped.get("no subject_index", 0) + 1
            continue
        subj = words[si]
        other = swap.get(subj) or swap.get(subj.lower())
        if other is None:
            dropped["subject has no other-number form"] = dropped.get("subject has no other-number form", 0) + 1
            continue
        corr = list(words)
        corr[si] = other
        clean.append(p.prefix)
        corrupted.append(" ".join(corr))
        good.append(p.good_word)
        bad.append(p.bad_word)
        ids.append(p.id)
        labels.append({"paradigm": p.paradigm, **{k: v for k, v in p.labels.items() if isinstance(v, str | int)}})
    if not ids:
        raise ProbekitError(f"no pair could be turned into clean/corrupted prompts (dropped: {dropped})",
                            fix="use template:agreement or pairs with subject_index and nouns in the vocabulary")
    out = PatchPairs.from_strings(model, clean, corrupted, good, bad, ids=ids, labels=labels)
    for k, v in dropped.items():
        out.dropped[k] = out.dropped.get(k, 0) + v
    return out


def _patch_task(model, pp: PatchPairs, prompts: list[tuple[int, ...]]) -> _Task:
    task = _Task(model, ["logit_diff"], "patch")
    for i, seq in enumerate(prompts):
        task.seqs.append(seq)
        task.item_rows.append([i])
        t = len(seq) - 1
        task.entries.append([(i, t, pp.good[i], {"logit_diff": 1.0}), (i, t, pp.bad[i], {"logit_diff": -1.0})])
        task.attn_terms.append([])
    return task


def _as_patch_pairs(model, data, max_pairs=None) -> PatchPairs:
    if isinstance(data, PatchPairs):
        if max_pairs is None or max_pairs >= len(data):
            return data
        return PatchPairs(data.ids[:max_pairs], data.clean[:max_pairs], data.corrupted[:max_pairs],
                          data.good[:max_pairs], data.bad[:max_pairs], data.labels[:max_pairs], dict(data.dropped))
    return make_patch_pairs(model, data, max_pairs=max_pairs)


def _tl_metric(good: torch.Tensor, bad: torch.Tensor):
    def metric(logits):
        lp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        return lp[torch.arange(lp.shape[0]), good.to(lp.device)] - lp[torch.arange(lp.shape[0]), bad.to(lp.device)]

    return metric


def patch_heads(model, data, heads="all", *, sweep: str = "fast", max_pairs: int | None = None,
                batch_size: int | None = None, max_tokens: int = 2048, n_boot: int = 1000, seed: int = 0,
                progress: bool = False) -> pd.DataFrame:
    """Exact activation patching of each head's output (all positions), clean -> corrupted.

    ``data``: a `PatchPairs` or a minimal-pair dataset (`make_patch_pairs`). ``sweep``: ``fast``,
    ``naive`` or ``tl`` (`transformer_lens.patching.get_act_patch_attn_head_out_all_pos`, prompts
    grouped by length so no padding is needed); all give the same numbers.

    Returns one row per head: ``model, layer, head, method="patch", metric="logit_diff", clean,
    corrupted, patched, delta (= patched - corrupted), recovered (= delta / (clean - corrupted)),
    delta_ci_low, delta_ci_high, n``.
    """
    pp = _as_patch_pairs(model, data, max_pairs)
    hs = parse_heads(model, heads)
    t0 = time.perf_counter()
    if sweep == "tl":
        clean_m, corr_m, patched = _patch_tl(model, pp, hs, batch_size or 64)
    else:
        task = _patch_task(model, pp, pp.corrupted)
        replacer = _Replacer(model, task, "patch", [layer for layer, _ in hs], donor_seqs=pp.clean)
        res = _run(model, task, [[h] for h in hs], replacer, sweep=sweep, batch_items=batch_size,
                   max_tokens=max_tokens, progress=progress)
        corr_m = res.clean["logit_diff"]
        patched = np.stack([a["logit_diff"] for a in res.ablated])
        clean_m = _patch_task_values(model, pp)
    seconds = time.perf_counter() - t0
    df = _patch_frame(model, hs, clean_m, corr_m, patched, "patch", n_boot, seed)
    df.attrs.update({"seconds": seconds, "sweep": sweep, "dropped": dict(pp.dropped)})
    return df


def _patch_task_values(model, pp: PatchPairs) -> np.ndarray:
    task = _patch_task(model, pp, pp.clean)
    res = _run(model, task, [], _Replacer(model, task, "zero", []), sweep="naive")
    return res.clean["logit_diff"]


def _patch_tl(model, pp: PatchPairs, hs: list[Head], batch_size: int):
    from transformer_lens import patching

    n = len(pp)
    clean_m, corr_m = np.zeros(n), np.zeros(n)
    patched = np.zeros((len(hs), n))
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(pp.clean):
        groups.setdefault(len(seq), []).append(i)
    progress_bar = patching.tqdm  # TL draws a bar per sweep; silence it for the duration
    patching.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        for _, members in sorted(groups.items()):
            for s in range(0, len(members), batch_size):
                idx = members[s:s + batch_size]
                clean = torch.tensor([pp.clean[i] for i in idx], device=model.device)
                corr = torch.tensor([pp.corrupted[i] for i in idx], device=model.device)
                metric = _tl_metric(torch.tensor([pp.good[i] for i in idx]), torch.tensor([pp.bad[i] for i in idx]))
                with torch.inference_mode():
                    clean_logits, cache = model.bridge.run_with_cache(clean, names_filter=lambda x: x.endswith("hook_z"))
                    clean_m[idx] = metric(clean_logits).cpu().numpy()
                    corr_m[idx] = metric(model.bridge(corr)).cpu().numpy()
                    res = patching.get_act_patch_attn_head_out_all_pos(model.bridge, corr, cache, metric, reduce="none")
                vals = res.values.cpu().numpy()  # [layer, head, batch]
                for k, (layer, h) in enumerate(hs):
                    patched[k, idx] = vals[layer, h]
    finally:
        patching.tqdm = progress_bar
    return clean_m, corr_m, patched


def _patch_frame(model, hs, clean_m, corr_m, patched, method, n_boot, seed) -> pd.DataFrame:
    from probekit.stats import bootstrap_ci

    gap = float(np.mean(clean_m) - np.mean(corr_m))
    rows = []
    for k, (layer, h) in enumerate(hs):
        delta = patched[k] - corr_m
        lo, hi = bootstrap_ci(delta, n_boot=n_boot, seed=seed) if delta.size > 1 else (np.nan, np.nan)
        rows.append({
            "model": model.name, "layer": layer, "head": h, "method": method, "metric": "logit_diff",
            "clean": float(np.mean(clean_m)), "corrupted": float(np.mean(corr_m)),
            "patched": float(np.mean(patched[k])), "delta": float(np.mean(delta)),
            "recovered": float(np.mean(delta)) / gap if gap != 0 else np.nan,
            "delta_ci_low": lo, "delta_ci_high": hi, "n": int(delta.size),
        })
    return pd.DataFrame(rows)


def attribution_patch(model, data, heads="all", *, max_pairs: int | None = None, batch_size: int = 32,
                      n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Attribution patching (Nanda 2023; Syed et al. 2023): a first-order estimate of `patch_heads`.

    For each batch: a clean forward caching ``hook_z``, a corrupted forward keeping ``hook_z`` in the
    autograd graph, and one backward of the summed metric; the estimate for head (l, h) and item b is
    ``sum_{pos, d} (z_clean - z_corrupt)[b, pos, h, d] * dM_b/dz_corrupt[b, pos, h, d]``. Same frame as
    `patch_heads` with ``method="attribution"``; ``patched`` is ``corrupted + estimate``.
    """
    pp = _as_patch_pairs(model, data, max_pairs)
    hs = parse_heads(model, heads)
    layers = sorted({layer for layer, _ in hs})
    n = len(pp)
    est = np.zeros((model.n_layers, model.n_heads, n))
    clean_m, corr_m = np.zeros(n), np.zeros(n)
    bridge = model.bridge
    t0 = time.perf_counter()
    order = sorted(range(n), key=lambda i: (len(pp.clean[i]), i))
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        clean = pad([pp.clean[i] for i in idx], model.pad_token_id).to(model.device)
        corr = pad([pp.corrupted[i] for i in idx], model.pad_token_id).to(model.device)
        last = torch.tensor([len(pp.clean[i]) - 1 for i in idx], device=model.device)
        good = torch.tensor([pp.good[i] for i in idx], device=model.device)
        bad = torch.tensor([pp.bad[i] for i in idx], device=model.device)
        rows = torch.arange(len(idx), device=model.device)

        def metric(logits, rows=rows, last=last, good=good, bad=bad):
            lp = torch.log_softmax(logits[rows, last].float(), dim=-1)
            return lp[rows, good] - lp[rows, bad]

        with torch.inference_mode():
            logits, cache = bridge.run_with_cache(clean, names_filter=lambda x: x.endswith("hook_z"),
                                                  stop_at_layer=None)
            clean_m[idx] = metric(logits).cpu().numpy()
        store: dict[int, torch.Tensor] = {}

        def save(z, hook, store=store):
            store[int(hook.name.split(".")[1])] = z
            return z

        with torch.enable_grad(), bridge.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", save) for layer in layers]):
            out = bridge(corr)
            m = metric(out)
            zs = [store[layer] for layer in layers]
            if not all(z.requires_grad for z in zs):
                raise ProbekitError("attribution patching needs gradients, but hook_z does not require grad",
                                    fix="do not freeze the model's parameters (requires_grad=False)")
            grads = torch.autograd.grad(m.sum(), zs)
        corr_m[idx] = m.detach().cpu().numpy()
        for layer, z, g in zip(layers, zs, grads):
            dz = cache[f"blocks.{layer}.attn.hook_z"] - z.detach()
            contrib = (dz * g).sum(dim=(1, 3))  # [batch, head]; pads are 0 (equal tokens, no gradient)
            est[layer][:, idx] = contrib.T.double().cpu().numpy()
        del store, zs, grads, out
    seconds = time.perf_counter() - t0
    patched = np.stack([corr_m + est[layer, h] for layer, h in hs])
    df = _patch_frame(model, hs, clean_m, corr_m, patched, "attribution", n_boot, seed)
    df.attrs.update({"seconds": seconds, "dropped": dict(pp.dropped)})
    return df


def compare_patching(exact: pd.DataFrame, attribution: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Agreement of attribution with exact patching over heads: Spearman rank correlation of the
    signed effects and of their sizes, and the overlap of the top-k heads by |effect|."""
    from probekit.stats import spearman, topk_overlap

    merged = exact.merge(attribution, on=["layer", "head"], suffixes=("_exact", "_attr"))
    if len(merged) < 3:
        raise ProbekitError("need at least 3 heads in both frames to compare", fix="patch more heads")
    a, b = merged["delta_exact"].to_numpy(), merged["delta_attr"].to_numpy()
    rho, p = spearman(a, b)
    rho_abs, p_abs = spearman(np.abs(a), np.abs(b))
    k = min(k, len(merged))
    return pd.DataFrame([{
        "n_heads": len(merged), "spearman": rho, "spearman_p": p, "spearman_abs": rho_abs,
        "spearman_abs_p": p_abs, "k": k, "topk_overlap": topk_overlap(np.abs(a), np.abs(b), k),
        "chance_overlap": k / len(merged),
        "seconds_exact": exact.attrs.get("seconds", np.nan), "seconds_attribution": attribution.attrs.get("seconds", np.nan),
    }])


# --------------------------------------------------------------------------------------------------
# plots


def heatmap(frame: pd.DataFrame, path, *, metric: str | None = None, n_layers: int | None = None,
            n_heads: int | None = None, title: str | None = None):
    """A layers x heads heatmap of ``delta`` (one panel per metric, or just ``metric``), saved to ``path``."""
    from probekit.report import pyplot

    plt = pyplot()
    single = frame[frame["layer"] >= 0]
    metrics = [metric] if metric else list(dict.fromkeys(single["metric"]))
    n_layers = n_layers or int(single["layer"].max()) + 1
    n_heads = n_heads or int(single["head"].max()) + 1
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 + 0.45 * n_heads * len(metrics), 1.2 + 0.22 * n_layers),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        grid = np.full((n_layers, n_heads), np.nan)
        sub = single[single["metric"] == m]
        grid[sub["layer"].to_numpy(), sub["head"].to_numpy()] = sub["delta"].to_numpy()
        lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"delta {m}", fontsize=9)
        ax.set_xticks(range(n_heads))
        fig.colorbar(im, ax=ax, fraction=0.05)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
