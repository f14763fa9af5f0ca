"""The measurement plan: which token sequences are run, which items they belong to, what is read.

A `Plan` is built once per dataset (`make_plan`: minimal pairs or sentences with gold arcs) and read
after every forward pass, clean or intervened. Metrics are defined in ``docs/methods/interventions.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from probekit.activations import hooks
from probekit.analyses.interventions.heads import Head, parse_heads
from probekit.analyses.interventions.layout import Batch, forward_kwargs, make_batch
from probekit.analyses.scoring import check_scorable, encode_pair
from probekit.data.schema import MinimalPair, Sentence
from probekit.errors import ProbekitError

PAIR_METRICS = ("accuracy", "margin", "logprob_diff")
SENTENCE_METRICS = ("relation_loss", "loss", "relation_attention")


class Entry(NamedTuple):
    """A scored position: ``sum(weights[m] * log p(target | seq[: pos + 1]))`` enters linear metric ``m``."""

    seq: int
    pos: int
    target: int
    weights: dict[str, float]


class AttentionTerm(NamedTuple):
    """Word-level attention from the tokens ``query`` to the tokens ``key`` of sequence ``seq``."""

    seq: int
    query: tuple[int, int]
    key: tuple[int, int]


class Plan:
    """Sequences, the items they belong to and the metrics read from a forward pass.

    Linear metrics are sums ``sum_e w[m, item, e] * logprob[e]`` over scored entries ``e`` (a position
    and the token it should predict). ``accuracy`` is derived from ``logprob_diff``; attention metrics
    read captured patterns; custom metrics (callables) read full logits.
    """

    derived: ClassVar[dict] = {"accuracy": ("logprob_diff", lambda v: (v > 0).astype(np.float64))}

    def __init__(self, model, metrics: Sequence, name: str):
        self.model = model
        self.name = name
        self.seqs: list[tuple[int, ...]] = []
        self.item_rows: list[list[int]] = []  # per item: its sequences
        self.entries: list[list[Entry]] = []  # per item
        self.attn_terms: list[list[AttentionTerm]] = []  # per item
        self.target_heads: list[Head] = []
        self.custom: dict[str, Callable] = {}
        self.metrics: list[str] = []
        self._seq_item: list[int] | None = None
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
        names = {self.derived[m][0] if m in self.derived else m for m in self.metrics}
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
        """Items grouped ``batch_items`` at a time, shortest first."""
        order = sorted(range(self.n_items), key=lambda i: (self.item_length(i), i))
        return [order[s : s + batch_items] for s in range(0, len(order), batch_items)]

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
        """The item of each sequence."""
        if self._seq_item is None or len(self._seq_item) != len(self.seqs):
            self._seq_item = [0] * len(self.seqs)
            for i, rows in enumerate(self.item_rows):
                for r in rows:
                    self._seq_item[r] = i
        return self._seq_item

    def make_batch(
        self, items: list[int], *, pack: bool = False, truncate: bool = False, share_across_items: bool = True
    ) -> Batch:
        """Lay out ``items`` for one forward (`probekit.analyses.interventions.layout.make_batch`)."""
        return make_batch(self, items, pack=pack, truncate=truncate, share_across_items=share_across_items)

    # -- reading a forward pass
    def values(
        self,
        batch: Batch,
        sel_logits: torch.Tensor | None,
        patterns: dict[int, torch.Tensor] | None,
        full_logits: torch.Tensor | None = None,
    ) -> dict[str, np.ndarray]:
        """Per-item metric values ``{metric: [n_items_batch]}`` for one batch (one intervened copy).

        ``sel_logits  # [n_sel, vocab]`` at ``(sel_b, sel_t)``; ``patterns``: layer ->
        ``[row, n_target_heads_in_layer, q, k]``; ``full_logits  # [row, pos, vocab]`` for custom metrics.
        """
        out: dict[str, np.ndarray] = {}
        lin = self.linear_metrics
        if lin:
            x = sel_logits.float()  # type: ignore[union-attr]  # given when there are linear metrics
            lse = torch.logsumexp(x, dim=-1)
            lp = (x[batch.ent_sel, batch.ent_tgt] - lse[batch.ent_sel]).double().cpu()
            for m in lin:
                out[m] = (batch.weights[m] @ lp).numpy()
        for m, fn in self.custom.items():
            per_row = torch.as_tensor(fn(full_logits, batch.input_ids.to(full_logits.device))).detach()  # type: ignore[union-attr]  # given with custom metrics
            per_row = per_row.double().cpu().numpy().reshape(-1)  # type: ignore[assignment]  # now an array
            if per_row.shape[0] != len(batch.rows):
                raise ProbekitError(
                    f"custom metric {m!r} returned {per_row.shape[0]} values for {len(batch.rows)} sequences",
                    fix="return one value per sequence: a [batch] tensor",
                )
            out[m] = np.array(
                [np.mean([per_row[batch.seq_rows[r]] for r in self.item_rows[i]]) for i in batch.items]
            )
        if "relation_attention" in self.metrics:
            out["relation_attention"] = self.attention_values(batch, patterns)  # type: ignore[arg-type]  # given with relation_attention
        for m, (src, fn) in self.derived.items():
            if m in self.metrics:
                out[m] = fn(out[src])
        return {m: out[m] for m in self.metrics}

    def attention_values(self, batch: Batch, patterns: dict[int, torch.Tensor]) -> np.ndarray:
        """Mean word-level attention of the target heads along each item's arcs ``[n_items_batch]``."""
        total = np.zeros(len(batch.items))
        count = np.zeros(len(batch.items))
        heads_by_layer = {
            layer: [h for lyr, h in self.target_heads if lyr == layer] for layer in self.pattern_layers
        }
        for layer, p in patterns.items():  # p: [row, n_heads_sel, q, k]
            n_h = len(heads_by_layer[layer])
            pc = p.double().cpu()
            for k_item, row, q_idx, k_idx in batch.attn:
                total[k_item] += float(pc[row][:, q_idx][:, :, k_idx].sum(-1).mean(-1).sum())
                count[k_item] += n_h
        return total / np.maximum(count, 1)


# --------------------------------------------------------------------------------------------------
# building plans


def make_plan(model, dataset, metric, relation=None, target_heads=None, max_items=None) -> Plan:
    """The plan for minimal pairs or sentences (not a mix); ``metric=None`` picks the defaults
    (`PAIR_METRICS`; ``relation_loss, relation_attention`` for sentences, ``relation_attention`` alone
    for encoders)."""
    items = list(getattr(dataset, "items", dataset))
    if max_items is not None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ProbekitError(f"max_items is {max_items!r}", fix="pass a positive integer, or None for all")
        items = items[:max_items]
    if not items:
        raise ProbekitError("the dataset is empty", fix="pass minimal pairs or sentences")
    metrics = default_metrics(items, metric)
    if all(isinstance(x, MinimalPair) for x in items):
        return pair_plan(model, items, metrics)
    if all(isinstance(x, Sentence) for x in items):
        if not model.is_causal and metric is None:
            metrics = ["relation_attention"]
        return sentence_plan(model, items, metrics, relation, target_heads, spec=getattr(dataset, "spec", ""))
    raise ProbekitError("the dataset mixes sentences and minimal pairs", fix="ablate on one kind at a time")


def default_metrics(dataset, metric) -> list:
    if metric is None:
        return list(PAIR_METRICS) if is_pairs(dataset) else ["relation_loss", "relation_attention"]
    if isinstance(metric, str) or callable(metric):
        return [metric]
    return list(metric)


def is_pairs(dataset) -> bool:
    items = list(getattr(dataset, "items", dataset))
    return bool(items) and all(isinstance(x, MinimalPair) for x in items)


def pair_plan(model, pairs: list[MinimalPair], metrics) -> Plan:
    """Minimal pairs: each item is a good and a bad sentence, scored from their first differing token."""
    check_scorable(model)
    plan = Plan(model, metrics, "pairs")
    bad = [m for m in plan.metrics if m not in PAIR_METRICS and m not in plan.custom]
    if bad:
        raise ProbekitError(
            f"metric {bad[0]!r} does not apply to minimal pairs",
            fix=f"use some of {PAIR_METRICS} (or a callable)",
        )
    lin = plan.linear_metrics
    for p in pairs:
        e = encode_pair(model, p)
        g, b = len(plan.seqs), len(plan.seqs) + 1
        plan.seqs += [e.good_ids, e.bad_ids]
        plan.item_rows.append([g, b])
        ents = []
        for seq, ids, span, sign in ((g, e.good_ids, e.good_span, 1.0), (b, e.bad_ids, e.bad_span, -1.0)):
            for t in range(e.start, len(ids)):
                w = {"logprob_diff": sign}
                if span[0] <= t < span[1]:
                    w["margin"] = sign
                w = {m: v for m, v in w.items() if m in lin}
                if w:  # positions no requested metric reads are never computed
                    ents.append(Entry(seq, t - 1, ids[t], w))
        plan.entries.append(ents)
        plan.attn_terms.append([])
    return plan


def relation_arcs(sentences: list[Sentence], relation: str, spec: str = "") -> list[list[tuple[int, int]]]:
    """Per sentence, its ``(dependent, head)`` arcs labelled ``relation``
    (`probekit.data.relations.relation_instances`, so `RELATION_ALIASES` apply)."""
    from probekit.data import Dataset
    from probekit.data.relations import relation_instances

    inst = relation_instances(Dataset(spec, tuple(sentences)), [relation], directions=("dep_to_head",))
    arcs: list[list[tuple[int, int]]] = [[] for _ in sentences]
    for k, src, tgt in zip(inst["sentence_idx"], inst["src"], inst["tgt"], strict=True):
        arcs[int(k)].append((int(src), int(tgt)))
    return arcs


def sentence_plan(
    model, sentences: list[Sentence], metrics, relation: str | None, target_heads, spec: str = ""
) -> Plan:
    """Sentences with gold arcs: next-token losses and word-level attention along the ``relation`` arcs."""
    from probekit.activations.align import align

    plan = Plan(model, metrics, "sentences")
    bad = [m for m in plan.metrics if m not in SENTENCE_METRICS and m not in plan.custom]
    if bad:
        raise ProbekitError(
            f"metric {bad[0]!r} does not apply to sentences",
            fix=f"use some of {SENTENCE_METRICS} (with relation=...) or a callable",
        )
    if any(m != "relation_attention" for m in plan.metrics):
        check_scorable(model)
    needs_rel = [m for m in plan.metrics if m in ("relation_loss", "relation_attention")]
    if needs_rel and not relation:
        raise ProbekitError(
            f"metric {needs_rel[0]!r} needs a relation", fix="pass relation='nsubj' (a UD deprel)"
        )
    all_arcs = relation_arcs(sentences, relation, spec) if needs_rel else [[] for _ in sentences]  # type: ignore[arg-type]  # needs_rel: relation checked above
    skip_last = 0 if model.is_causal else 1  # an encoder's final [SEP] predicts nothing
    for s, arcs in zip(sentences, all_arcs, strict=True):
        if needs_rel and not arcs:
            continue
        enc = align(model, s)
        row = len(plan.seqs)
        plan.seqs.append(enc.input_ids)
        plan.item_rows.append([row])
        ents: dict[int, dict[str, float]] = {}
        if "loss" in plan.metrics:
            n = enc.n_tokens - 1 - skip_last
            for t in range(1, enc.n_tokens - skip_last):
                ents.setdefault(t, {})["loss"] = -1.0 / n
        if "relation_loss" in plan.metrics:
            later = sorted({max(d, h) for d, h in arcs})
            toks = [t for w in later for t in range(*enc.word_spans[w])]
            for t in toks:
                ents.setdefault(t, {})["relation_loss"] = -1.0 / len(toks)
        plan.entries.append([Entry(row, t - 1, enc.input_ids[t], w) for t, w in sorted(ents.items())])
        terms = []
        for d, h in arcs:
            src, tgt = (max(d, h), min(d, h)) if model.is_causal else (d, h)
            terms.append(AttentionTerm(row, enc.word_spans[src], enc.word_spans[tgt]))
        plan.attn_terms.append(terms)
    if not plan.seqs:
        raise ProbekitError(
            f"no sentence has a {relation!r} arc" if relation else "no sentences to score",
            fix="check the relation name (a UD deprel such as nsubj) and the dataset",
        )
    if "relation_attention" in plan.metrics:
        plan.target_heads = (
            parse_heads(model, target_heads)
            if target_heads is not None
            else top_relation_heads(model, plan, k=5)
        )
    return plan


def top_relation_heads(model, plan: Plan, k: int = 5) -> list[Head]:
    """The k heads with the highest clean relation-attention score on the plan's sentences."""
    plan.target_heads = parse_heads(model, "all")
    scores = np.zeros((model.n_layers, model.n_heads))
    with torch.inference_mode():
        for items in plan.batches(32):
            batch = plan.make_batch(items)
            _, cache = model.bridge.run_with_cache(
                batch.input_ids.to(model.device),
                **forward_kwargs(batch, model),
                names_filter=hooks.is_pattern,
            )
            for _, row, q_idx, k_idx in batch.attn:
                for layer in range(model.n_layers):
                    p = cache[hooks.pattern(layer)][row][:, q_idx][:, :, k_idx]
                    scores[layer] += p.sum(-1).mean(-1).double().cpu().numpy()
    flat = np.argsort(-scores.ravel(), kind="stable")[:k]
    return [(int(i // model.n_heads), int(i % model.n_heads)) for i in flat]


def reference_sequences(model, plan: Plan, reference=None) -> tuple[list[tuple[int, ...]], list[list[int]]]:
    """The sequences (and their grouping into items) that means and resample donors come from:
    ``plan``'s own, or those of the ``reference`` dataset."""
    if reference is None:
        return plan.seqs, plan.item_rows
    if not model.is_causal:  # encoders: align the reference sentences directly
        from probekit.activations.align import align_many

        seqs = [e.input_ids for e in align_many(model, list(getattr(reference, "sentences", reference)))]
        return seqs, [[i] for i in range(len(seqs))]
    ref = make_plan(model, reference, metric=None if is_pairs(reference) else ["loss"], relation=None)
    return ref.seqs, ref.item_rows
