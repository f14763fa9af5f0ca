"""How a plan's items become the rows of one forward pass (`make_batch`).

Two layouts give the same logits up to float rounding (``docs/methods/interventions.md``, "Sweeps"):

- **padded** (the reference): one row per sequence, right-padded;
- **packed** (causal models, fast sweeps): each sequence cut after the last position a metric reads,
  the sequences stored as a prefix trie (a token shared by several sequences is computed once) with a
  4-D mask that lets a position see exactly its ancestors and position ids = depth, and the tries packed
  first-fit into rows of up to `PACK_WIDTH` positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch

from probekit.analyses.scoring import pad

if TYPE_CHECKING:
    from probekit.analyses.interventions.plan import Plan

#: tries are packed into rows of at most this many positions (or the longest trie, if longer)
PACK_WIDTH = 64

Block = tuple[int, int, int, int]  # (row, start, length, item): the positions of one item's tokens


@dataclass
class Batch:
    """One forward's rows and where the plan's metrics read them."""

    items: list[int]  # plan items in this batch
    rows: list[int]  # per row: a plan sequence (the first one of a packed row)
    row_item: list[int]  # per row: its (first) plan item
    input_ids: torch.Tensor  # [row, pos]
    attention_mask: (
        torch.Tensor | None
    )  # None (causal, right padding), [row, pos] (encoders) or [row, 1, pos, pos]
    position_ids: torch.Tensor | None  # [row, pos] token depth when rows are packed, else None (0..pos-1)
    sel_b: torch.Tensor  # [n_sel] row of each position whose logits are read ...
    sel_t: torch.Tensor  # [n_sel] ... and its position
    ent_sel: torch.Tensor  # [n_entries] per scored entry: index into sel
    ent_tgt: torch.Tensor  # [n_entries] per scored entry: the token it should predict
    weights: dict[str, torch.Tensor]  # linear metric -> [n_items_batch, n_entries]
    attn: list[tuple[int, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # attention terms: (item in batch, row, query positions, key positions)
    seq_rows: dict[int, int] = field(default_factory=dict)  # plan sequence -> row
    blocks: list[Block] = field(default_factory=list)  # item-specific spans (resample / patch read these)


class _Rows(NamedTuple):
    """A layout before the metrics are placed on it."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    row_item: list[int]
    first_seq: list[int]
    where: dict[int, tuple[int, list[int]]]  # plan sequence -> (row, position of each of its tokens)
    blocks: list[Block]


class Trie(NamedTuple):
    """A prefix trie of token sequences, flattened: node ``j`` is one token."""

    tokens: list[int]
    depth: list[int]  # position of the token in its sequences
    ancestors: torch.Tensor  # [node, node] bool: node j may attend to node i
    paths: dict[int, list[int]]  # plan sequence -> node of each of its tokens


def padded(seqs: list[tuple[int, ...]], pad_id: int, mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``input_ids  # [row, pos]`` right-padded (`probekit.analyses.scoring.pad`) and, with ``mask``, the
    ``attention_mask  # [row, pos]`` an encoder needs (a causal model needs none)."""
    ids = pad(seqs, pad_id)
    if not mask:
        return ids, None
    attention_mask = torch.zeros_like(ids)
    for k, s in enumerate(seqs):
        attention_mask[k, : len(s)] = 1
    return ids, attention_mask


def forward_kwargs(batch: Batch, model, copies: int = 1) -> dict:
    """The batch's attention mask and, for packed rows, position ids, repeated for ``copies`` stacked
    copies: the keyword arguments of the forward."""
    m = batch.attention_mask
    out = {"attention_mask": None if m is None else m.repeat(copies, *([1] * (m.ndim - 1))).to(model.device)}
    if batch.position_ids is not None:
        out["position_ids"] = batch.position_ids.repeat(copies, 1).to(model.device)
    return out


def make_batch(
    plan: Plan,
    items: list[int],
    *,
    pack: bool = False,
    truncate: bool = False,
    share_across_items: bool = True,
) -> Batch:
    """Lay out ``items`` of ``plan`` for one forward.

    ``pack`` (causal models, no custom metric) builds packed prefix tries; ``truncate`` cuts each
    sequence after the last position a metric reads. A causal position depends only on its ancestors,
    so each logit is the reference layout's up to float rounding. Sharing across items is exact when
    the intervention does not depend on the item (zero, mean); ``share_across_items=False`` (resample,
    patch) shares tokens only within an item.
    """
    lengths = {
        r: plan.needed_length(r) if truncate else len(plan.seqs[r]) for i in items for r in plan.item_rows[i]
    }
    if pack and plan.model.is_causal and not plan.custom:
        rows = _packed_rows(plan, items, lengths, share_across_items)
    else:
        rows = _padded_rows(plan, items, lengths)
    sel, ent_sel, ent_tgt, weights = _scored_entries(plan, items, rows.where)
    attn = []
    for k_item, i in enumerate(items):
        for seq, (qa, qb), (ka, kb) in plan.attn_terms[i]:
            row, path = rows.where[seq]
            attn.append((k_item, row, torch.tensor(path[qa:qb]), torch.tensor(path[ka:kb])))
    keys = list(sel)
    return Batch(
        items=list(items),
        rows=rows.first_seq,
        row_item=rows.row_item,
        input_ids=rows.input_ids,
        attention_mask=rows.attention_mask,
        position_ids=rows.position_ids,
        sel_b=torch.tensor([x[0] for x in keys], dtype=torch.long),
        sel_t=torch.tensor([x[1] for x in keys], dtype=torch.long),
        ent_sel=torch.tensor(ent_sel, dtype=torch.long),
        ent_tgt=torch.tensor(ent_tgt, dtype=torch.long),
        weights=weights,
        attn=attn,
        seq_rows={seq: v[0] for seq, v in rows.where.items()},
        blocks=rows.blocks,
    )


def _padded_rows(plan: Plan, items: list[int], lengths: dict[int, int]) -> _Rows:
    """The reference layout: one right-padded row per sequence."""
    rows = [(i, r, lengths[r]) for i in items for r in plan.item_rows[i]]
    ids, mask = padded(
        [plan.seqs[r][:n] for _, r, n in rows], plan.model.pad_token_id, not plan.model.is_causal
    )
    where = {r: (k, list(range(n))) for k, (_, r, n) in enumerate(rows)}
    blocks = [(k, 0, n, i) for k, (i, _, n) in enumerate(rows)]
    return _Rows(ids, mask, None, [i for i, _, _ in rows], [r for _, r, _ in rows], where, blocks)


def _packed_rows(plan: Plan, items: list[int], lengths: dict[int, int], share_across_items: bool) -> _Rows:
    """Prefix tries packed into rows: one trie per group of items (``share_across_items``, groups packed
    first-fit by trie size) or one trie per item, the tries packed first-fit."""

    def sequences(group: list[int]) -> list[tuple[int, int]]:
        return [(r, lengths[r]) for i in group for r in plan.item_rows[i]]

    if share_across_items:
        sizes = [(i, None, trie_size(plan.seqs, sequences([i]))) for i in items]
        groups = [[t[0] for _, t in row] for row in best_packing(sizes)]
        layout = [[(0, (g, build_trie(plan.seqs, sequences(g))))] for g in groups]
    else:
        tries = [((i,), build_trie(plan.seqs, sequences([i]))) for i in items]
        packed = best_packing([(t, None, len(t[1].tokens)) for t in tries])
        layout = [[(base, tree[0]) for base, tree in row] for row in packed]
    width = max(base + len(trie.tokens) for row in layout for base, (_, trie) in row)
    n_rows = len(layout)
    ids = torch.full((n_rows, width), plan.model.pad_token_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(n_rows, 1, 1, 1)  # [row, 1, pos, pos]
    row_item, first_seq, where, blocks = [], [], {}, []
    for k, row in enumerate(layout):
        first_item = row[0][1][0][0]
        row_item.append(first_item)
        first_seq.append(plan.item_rows[first_item][0])
        for base, (group, trie) in row:
            n = len(trie.tokens)
            ids[k, base : base + n] = torch.tensor(trie.tokens, dtype=torch.long)
            pos[k, base : base + n] = torch.tensor(trie.depth, dtype=torch.long)
            mask[k, 0, base : base + n, base : base + n] = trie.ancestors
            for seq, path in trie.paths.items():
                where[seq] = (k, [base + x for x in path])
            if len(group) == 1:
                blocks.append((k, base, n, group[0]))
    return _Rows(ids, mask, pos, row_item, first_seq, where, blocks)


def _scored_entries(plan: Plan, items: list[int], where: dict[int, tuple[int, list[int]]]):
    """The positions whose logits are read (``sel``: (row, pos) -> index), and per scored entry its
    index into ``sel``, its target token and each linear metric's weight ``[n_items_batch, n_entries]``."""
    sel: dict[tuple[int, int], int] = {}
    ent_sel, ent_tgt = [], []
    lin = plan.linear_metrics
    w: dict[str, list[tuple[int, float]]] = {m: [] for m in lin}
    for k_item, i in enumerate(items):
        for seq, t, tgt, weights in plan.entries[i]:
            row, path = where[seq]
            key = (row, path[t])
            if key not in sel:
                sel[key] = len(sel)
            ent_sel.append(sel[key])
            ent_tgt.append(tgt)
            for m in lin:
                w[m].append((k_item, weights.get(m, 0.0)))
    matrices = {}
    for m in lin:
        mat = torch.zeros((len(items), len(ent_sel)), dtype=torch.float64)
        for e, (k_item, val) in enumerate(w[m]):
            mat[k_item, e] = val
        matrices[m] = mat
    return sel, ent_sel, ent_tgt, matrices


# --------------------------------------------------------------------------------------------------
# tries and first-fit packing


def trie_size(seqs: list[tuple[int, ...]], chosen: list[tuple[int, int]]) -> int:
    """Nodes of the prefix trie of ``(sequence index, length)`` pairs: distinct prefixes."""
    return len({tuple(seqs[r][: t + 1]) for r, n in chosen for t in range(n)})


def build_trie(seqs: list[tuple[int, ...]], chosen: list[tuple[int, int]]) -> Trie:
    """The prefix trie of ``(sequence index, length)`` pairs, nodes in creation order."""
    index: dict[tuple[int, int], int] = {}
    tokens, depth, parent = [], [], []  # type: list[int], list[int], list[int]
    paths: dict[int, list[int]] = {}
    for r, n in chosen:
        node, path = -1, []
        for t, tok in enumerate(seqs[r][:n]):
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
    return Trie(tokens, depth, anc, paths)


def first_fit(trees: list, cap: int) -> list[list[tuple[int, tuple]]]:
    """Pack ``(key, payload, length)`` trees into rows of ``cap`` positions, longest first: per row
    ``[(start, tree), ...]``."""
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


def best_packing(trees: list) -> list[list[tuple[int, tuple]]]:
    """`first_fit` with the row width (from the longest tree up to `PACK_WIDTH`) that computes the fewest
    positions (rows x width), then uses the fewest rows."""
    longest = max(t[2] for t in trees)
    return min(
        (first_fit(trees, cap) for cap in range(longest, max(longest, PACK_WIDTH) + 1)),
        key=lambda rows: (len(rows) * max(b + t[2] for row in rows for b, t in row), len(rows)),
    )
