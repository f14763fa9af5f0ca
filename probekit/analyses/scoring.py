"""Minimal-pair scoring (claim C5): does the model prefer the grammatical sentence?

`analyze_pairs(model, dataset)` scores every `MinimalPair` of a dataset (BLiMP, ``template:agreement``)
with a causal language model (whole-sentence log-probability, the BLiMP convention of Warstadt et al.
2020) and returns a `PairScores`; `score_pairs` returns its per-paradigm summary, `pair_scores` the
per-pair numbers. The conventions (sink token, multi-token words, two-prefix pairs, why encoders are
refused; Salazar et al. 2020 for masked LMs) are in ``docs/methods/scoring.md``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probekit.data.schema import MinimalPair
from probekit.errors import ProbekitError
from probekit.report import markdown_table, write_tables

#: Published BLiMP accuracies (share of pairs whose good sentence gets the higher total log-probability).
#: Source: Warstadt et al. 2020, "BLiMP: The Benchmark of Linguistic Minimal Pairs for English", TACL 8,
#: file ``raw_results/summary/models_summary.jsonl`` of github.com/alexwarstadt/blimp (commit 3e56b06).
PUBLISHED_BLIMP: dict[str, dict[str, float]] = {
    "regular_plural_subject_verb_agreement_1": {
        "5-gram": 0.755,
        "LSTM": 0.890,
        "Transformer-XL": 0.731,
        "GPT-2": 0.967,
    },
    "regular_plural_subject_verb_agreement_2": {
        "5-gram": 0.809,
        "LSTM": 0.825,
        "Transformer-XL": 0.853,
        "GPT-2": 0.910,
    },
    "irregular_plural_subject_verb_agreement_1": {
        "5-gram": 0.726,
        "LSTM": 0.811,
        "Transformer-XL": 0.776,
        "GPT-2": 0.928,
    },
    "irregular_plural_subject_verb_agreement_2": {
        "5-gram": 0.876,
        "LSTM": 0.891,
        "Transformer-XL": 0.827,
        "GPT-2": 0.924,
    },
    "determiner_noun_agreement_1": {"5-gram": 0.883, "LSTM": 0.918, "Transformer-XL": 0.917, "GPT-2": 0.988},
    "determiner_noun_agreement_with_adjective_1": {
        "5-gram": 0.519,
        "LSTM": 0.867,
        "Transformer-XL": 0.859,
        "GPT-2": 0.975,
    },
}
PUBLISHED_CITATION = (
    "Warstadt et al. 2020, BLiMP (TACL 8), raw_results/summary/models_summary.jsonl, "
    "github.com/alexwarstadt/blimp@3e56b06"
)

SUMMARY_COLUMNS = (
    "model",
    "paradigm",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "mean_margin",
    "margin_ci_low",
    "margin_ci_high",
    "mean_logprob_diff",
    "multi_token_pairs",
)


@dataclass(frozen=True)
class EncodedPair:
    """One minimal pair as two token sequences (sink first) with the spans that are scored.

    ``start`` is the first token index at which ``good_ids`` and ``bad_ids`` may differ (the first
    token of the critical word, or an earlier token where tokenization differs); every score of a pair
    depends only on tokens from ``start`` on, because the shared prefix contributes the same
    log-probabilities to both sentences. ``good_span``/``bad_span`` are the ``[a, b)`` token ranges
    whose log-probabilities make the margin (critical word, or the next word for two-prefix pairs).
    """

    pair: MinimalPair
    good_ids: tuple[int, ...]
    bad_ids: tuple[int, ...]
    good_span: tuple[int, int]
    bad_span: tuple[int, int]
    start: int
    margin_kind: str
    good_word_tokens: int
    bad_word_tokens: int


def check_scorable(model) -> None:
    """Raise `ProbekitError` unless ``model`` is a causal LM whose logits can score sentences."""
    if model.is_causal:
        return
    if not model.has_lm_head:
        raise ProbekitError(
            f"{model.name} is an encoder without a trained language-model head: its logits are meaningless, "
            "so it cannot score minimal pairs",
            where="minimal-pair scoring",
            fix="use a causal LM (e.g. smollm2-135m); a trained masked LM would need masked-word "
            "(pseudo-log-likelihood) scoring, which probekit does not implement",
        )
    raise ProbekitError(
        f"{model.name} is a masked LM; probekit scores minimal pairs with causal LMs only",
        where="minimal-pair scoring",
        fix="use a causal LM; masked-word (pseudo-log-likelihood) scoring is not implemented",
    )


_NEXT_WORD = re.compile(r"\s*[\w'’-]+")


def _segments(sentence: str, prefix: str, word: str, which: str, pid: str) -> tuple[str, str, str]:
    """Split ``sentence`` into (prefix, critical word with its leading space, rest)."""
    head = f"{prefix} {word}" if prefix else word
    if not word or not sentence.startswith(head):
        raise ProbekitError(
            f"the {which} critical word {word!r} does not follow the prefix {prefix!r} in {sentence!r}",
            where=f"pair {pid!r}",
            fix="a minimal pair needs prefix + ' ' + critical word to start each sentence",
        )
    crit = f" {word}" if prefix else word
    return prefix, crit, sentence[len(head) :]


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids) if text else []


def encode_pair(model, pair: MinimalPair) -> EncodedPair:
    """Tokenize a pair for ``model`` (conventions: ``docs/methods/scoring.md``)."""
    check_scorable(model)
    if not isinstance(pair, MinimalPair):
        raise ProbekitError(
            f"expected a MinimalPair, got a {type(pair).__name__}",
            fix="score datasets of minimal pairs (blimp:PATH, template:agreement)",
        )
    if pair.good == pair.bad:
        raise ProbekitError(
            "the good and bad sentences are identical",
            where=f"pair {pair.id!r}",
            fix="a minimal pair must differ in its critical word",
        )
    tok = model.tokenizer
    two_prefix = pair.labels.get("method") == "two_prefix"
    seqs, spans, word_tokens = [], [], []
    for which, sentence, word in (("good", pair.good, pair.good_word), ("bad", pair.bad, pair.bad_word)):
        prefix, crit, rest = _segments(sentence, pair.prefix, word, which, pair.id)
        ids = [model.sink_token_id, *_tokens(tok, prefix)]
        crit_ids = _tokens(tok, crit)
        if not crit_ids:
            raise ProbekitError(
                f"the {which} critical word {word!r} encodes to no tokens",
                where=f"pair {pair.id!r}",
                fix="remove characters the tokenizer drops",
            )
        a = len(ids)
        ids += crit_ids
        span = (a, len(ids))
        if two_prefix:
            m = _NEXT_WORD.match(rest)
            if m is None:
                raise ProbekitError(
                    f"two-prefix pair: no word follows the critical word {word!r} in {sentence!r}",
                    where=f"pair {pair.id!r}",
                    fix="two-prefix pairs are scored on the word after the critical word",
                )
            nxt = _tokens(tok, m.group(0))
            span = (len(ids), len(ids) + len(nxt))
            ids += nxt
            rest = rest[m.end() :]
        ids += _tokens(tok, rest)
        seqs.append(tuple(ids))
        spans.append(span)
        word_tokens.append(len(crit_ids))
    good, bad = seqs
    start = next(
        (t for t, (x, y) in enumerate(zip(good, bad, strict=False)) if x != y), min(len(good), len(bad))
    )
    start = max(1, min(start, spans[0][0], spans[1][0]))
    if len(good) > model.n_ctx or len(bad) > model.n_ctx:
        raise ProbekitError(
            f"the pair is longer than {model.name}'s context of {model.n_ctx} tokens",
            where=f"pair {pair.id!r}",
            fix="drop very long pairs",
        )
    return EncodedPair(
        pair,
        good,
        bad,
        spans[0],
        spans[1],
        start,
        "continuation" if two_prefix else "critical_word",
        word_tokens[0],
        word_tokens[1],
    )


def as_pairs(dataset) -> list[MinimalPair]:
    """The minimal pairs of a Dataset / list; a clear error when there are none."""
    items = list(getattr(dataset, "pairs", dataset))
    pairs = [x for x in items if isinstance(x, MinimalPair)]
    if not pairs:
        spec = getattr(dataset, "spec", None)
        raise ProbekitError(
            "the dataset has no minimal pairs",
            where=f"dataset {spec!r}" if spec else None,
            fix="use a minimal-pair dataset such as blimp:PATH or template:agreement",
        )
    return pairs


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` for t >= 1; ``out[:, 0] = 0``.

    Computed as ``logit - logsumexp(logits)`` so no ``[batch, pos, vocab]`` log-softmax copy is made.
    """
    logits = logits[:, :-1].float()
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, input_ids[:, 1:, None].to(logits.device)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
    out[:, 1:] = picked - lse
    return out


def pad(seqs: list[tuple[int, ...]], pad_id: int) -> torch.Tensor:
    """Right-pad token sequences to ``[batch, max_len]`` (no mask is needed by a causal model: real
    tokens never attend to the pads that follow them)."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def pair_scores(
    model, dataset, *, batch_size: int = 32, max_pairs: int | None = None, progress: bool = False
) -> pd.DataFrame:
    """One row per pair: ``id, paradigm, good_logprob, bad_logprob, logprob_diff, correct, margin,
    margin_kind, good_word_tokens, bad_word_tokens, n_tokens_good, n_tokens_bad`` plus the pair's
    scalar ``labels`` (e.g. ``attractor``), in dataset order."""
    from tqdm.auto import tqdm

    check_scorable(model)
    pairs = as_pairs(dataset)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ProbekitError(f"batch_size must be a positive integer, not {batch_size!r}")
    encs = [encode_pair(model, p) for p in pairs]
    order = sorted(range(len(encs)), key=lambda i: (max(len(encs[i].good_ids), len(encs[i].bad_ids)), i))
    good_lp, bad_lp = np.zeros(len(encs)), np.zeros(len(encs))
    good_span, bad_span = np.zeros(len(encs)), np.zeros(len(encs))
    device = model.device
    bar = tqdm(total=len(encs), desc=f"score {model.name}", unit="pair", disable=not progress, leave=False)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            seqs = [x for i in idx for x in (encs[i].good_ids, encs[i].bad_ids)]
            ids = pad(seqs, model.pad_token_id).to(device)
            lp = token_logprobs(model.bridge(ids), ids).cpu().numpy()
            for k, i in enumerate(idx):
                e = encs[i]
                g, b = lp[2 * k], lp[2 * k + 1]
                good_lp[i], bad_lp[i] = g[1 : len(e.good_ids)].sum(), b[1 : len(e.bad_ids)].sum()
                good_span[i] = g[e.good_span[0] : e.good_span[1]].sum()
                bad_span[i] = b[e.bad_span[0] : e.bad_span[1]].sum()
            bar.update(len(idx))
    bar.close()
    rows = []
    for i, e in enumerate(encs):
        p = e.pair
        labels = {k: v for k, v in p.labels.items() if isinstance(v, str | int | float | bool) or v is None}
        rows.append(
            {
                "model": model.name,
                "id": p.id,
                "paradigm": p.paradigm,
                "good": p.good,
                "bad": p.bad,
                "good_logprob": good_lp[i],
                "bad_logprob": bad_lp[i],
                "logprob_diff": good_lp[i] - bad_lp[i],
                "correct": bool(good_lp[i] > bad_lp[i]),
                "margin": good_span[i] - bad_span[i],
                "margin_kind": e.margin_kind,
                "good_word_tokens": e.good_word_tokens,
                "bad_word_tokens": e.bad_word_tokens,
                "n_tokens_good": len(e.good_ids),
                "n_tokens_bad": len(e.bad_ids),
                **{k: v for k, v in labels.items() if k not in ("method",)},
            }
        )
    return pd.DataFrame(rows)


def summarize_pairs(
    per_pair: pd.DataFrame, by: str = "paradigm", *, n_boot: int = 1000, seed: int = 0, overall: bool = True
) -> pd.DataFrame:
    """Per-group accuracy and margin with 95% bootstrap CIs (over pairs); ``overall`` adds an ``all`` row."""
    from probekit.stats import bootstrap_ci

    if by not in per_pair.columns:
        raise ProbekitError(
            f"cannot group pairs by {by!r}: no such column",
            fix=f"use one of {sorted(c for c in per_pair.columns if per_pair[c].dtype == object)}",
        )
    groups = [(str(k), g) for k, g in per_pair.groupby(by, sort=True, dropna=False)]
    if overall and len(groups) > 1:
        groups.append(("all", per_pair))
    rows = []
    for name, g in groups:
        correct = g["correct"].to_numpy(float)
        margin = g["margin"].to_numpy(float)
        lo, hi = bootstrap_ci(correct, n_boot=n_boot, seed=seed)
        mlo, mhi = bootstrap_ci(margin, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "model": g["model"].iloc[0],
                by: name,
                "n": len(g),
                "accuracy": correct.mean(),
                "ci_low": lo,
                "ci_high": hi,
                "mean_margin": margin.mean(),
                "margin_ci_low": mlo,
                "margin_ci_high": mhi,
                "mean_logprob_diff": g["logprob_diff"].mean(),
                "multi_token_pairs": int(((g["good_word_tokens"] > 1) | (g["bad_word_tokens"] > 1)).sum()),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class PairScores:
    """Minimal-pair scores of one model on one dataset (`analyze_pairs`).

    ``summary``: one row per group (``by`` column) with accuracy, margin and their 95% bootstrap CIs
    (`summarize_pairs`); ``per_pair``: one row per pair (`pair_scores`); ``data``: the label written
    in the files' ``data`` column.
    """

    model: str
    data: str
    by: str
    summary: pd.DataFrame
    per_pair: pd.DataFrame

    def table(self) -> pd.DataFrame:
        """The written table: ``summary`` with ``data`` as its second column."""
        out = self.summary.copy()
        out.insert(1, "data", self.data)
        return out

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``minimal_pairs.csv``, ``minimal_pairs.md`` and ``minimal_pairs.tex`` into ``folder``."""
        folder = Path(folder)
        write_tables({"minimal_pairs": self.table()}, folder)
        return [folder / f"minimal_pairs.{ext}" for ext in ("csv", "md", "tex")]


def analyze_pairs(
    model,
    dataset,
    *,
    by: str = "paradigm",
    batch_size: int = 32,
    max_pairs: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
    data_label: str | None = None,
) -> PairScores:
    """Minimal-pair accuracy and margin per paradigm (or per ``by`` column), with bootstrap CIs.

    Parameters
    ----------
    model : a causal `probekit.Model` (encoders raise `ProbekitError`, see ``docs/methods/scoring.md``).
    dataset : a `Dataset` of `MinimalPair` (``blimp:PATH``, ``template:agreement``) or a list of pairs.
    by : the per-pair column to group by, e.g. ``"paradigm"`` or ``"attractor"``.
    batch_size : pairs per forward. max_pairs : score only the first N pairs.
    n_boot, seed : bootstrap resamples and seed for the CIs.
    progress : show a progress bar.
    data_label : the ``data`` column of the written table (default ``dataset.spec``).

    Returns
    -------
    PairScores
        ``summary`` (columns ``model, <by>, n, accuracy, ci_low, ci_high, mean_margin, margin_ci_low,
        margin_ci_high, mean_logprob_diff, multi_token_pairs``; an ``all`` row pools every pair when
        there are several groups), ``per_pair``, and ``.write(folder)``.

    Examples
    --------
    >>> import probekit as pk
    >>> res = analyze_pairs(pk.load_model("tiny-llama"), pk.load_dataset("template:agreement?n=8"), n_boot=50)
    >>> res.data, list(res.table().columns[:4])
    ('template:agreement?n=8', ['model', 'data', 'paradigm', 'n'])
    """
    per_pair = pair_scores(model, dataset, batch_size=batch_size, max_pairs=max_pairs, progress=progress)
    summary = summarize_pairs(per_pair, by=by, n_boot=n_boot, seed=seed)
    label = getattr(dataset, "spec", "") if data_label is None else data_label
    return PairScores(model=model.name, data=label, by=by, summary=summary, per_pair=per_pair)


def score_pairs(
    model,
    dataset,
    *,
    by: str = "paradigm",
    batch_size: int = 32,
    max_pairs: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
    return_pairs: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The ``summary`` of `analyze_pairs` (``return_pairs=True``, kept for old callers: also ``per_pair``).

    Parameters
    ----------
    model, dataset, by, batch_size, max_pairs, n_boot, seed, progress : as in `analyze_pairs`.
    return_pairs : also return the per-pair frame; new code uses ``analyze_pairs(...).per_pair``.

    Returns
    -------
    pandas.DataFrame
        One row per group, see `analyze_pairs`.

    Examples
    --------
    >>> import probekit as pk
    >>> summary = pk.score_pairs(pk.load_model("tiny-llama"), pk.load_dataset("template:agreement?n=8"),
    ...                          n_boot=50)
    >>> summary.paradigm.tolist()[-1], int(summary.n.iloc[-1])   # the "all" row pools every pair
    ('all', 8)
    """
    res = analyze_pairs(
        model,
        dataset,
        by=by,
        batch_size=batch_size,
        max_pairs=max_pairs,
        n_boot=n_boot,
        seed=seed,
        progress=progress,
    )
    return (res.summary, res.per_pair) if return_pairs else res.summary


def published_table(summary: pd.DataFrame, by: str = "paradigm") -> pd.DataFrame:
    """``summary`` with the published BLiMP accuracies (`PUBLISHED_BLIMP`) beside ours (NaN where none)."""
    out = summary.copy()
    for col in ("GPT-2", "LSTM", "Transformer-XL", "5-gram"):
        out[f"published {col}"] = [PUBLISHED_BLIMP.get(str(p), {}).get(col, np.nan) for p in out[by]]
    return out


def summary_markdown(summary: pd.DataFrame, model_name: str, spec: str, by: str = "paradigm") -> str:
    """A short Markdown report: our accuracy [95% CI] next to the published numbers (tables by
    `probekit.report.markdown_table`)."""
    table = published_table(summary, by)
    show = pd.DataFrame(
        {
            by: table[by],
            "n": table["n"],
            "accuracy [95% CI]": [
                f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
                for a, lo, hi in zip(table["accuracy"], table["ci_low"], table["ci_high"], strict=True)
            ],
            "mean margin (nats)": table["mean_margin"].round(3),
            "GPT-2 (published)": table["published GPT-2"],
            "LSTM": table["published LSTM"],
            "5-gram": table["published 5-gram"],
        }
    )
    lines = [
        f"# Minimal pairs: {model_name} on `{spec}`",
        "",
        "Accuracy: share of pairs whose good sentence has the higher total log-probability (sink token in "
        "front, BLiMP convention); 95% percentile bootstrap CI over pairs. Margin: log-probability "
        "difference of the critical word given the prefix (summed over its tokens; two-prefix paradigms: "
        "of the next word given each prefix).",
        "",
        markdown_table(show, floatfmt=".3f"),
        f"Published numbers: {PUBLISHED_CITATION}; GPT-2 on the full 1,000 pairs of each paradigm. A row "
        "without them is not a BLiMP paradigm.",
        "",
    ]
    return "\n".join(lines)
