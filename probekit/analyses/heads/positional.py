"""Positional heads: Voita et al. (2019) argmax offsets, and TransformerLens' ``detect_head`` scores.

A head is *positional* when its argmax (self included, over the visible words) falls on one fixed
relative position for >= 90% of the words (Voita et al. 2019, "Analyzing Multi-Head Self-Attention",
ACL). `detector_scores` runs `transformer_lens.head_detector.detect_head` on the bridge, at token
level. Details: ``docs/methods/heads.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from probekit.activations import hooks
from probekit.analyses.heads.collect import Scored, capture_attention, check_capture, collect
from probekit.data import Dataset
from probekit.errors import ProbekitError

POSITIONAL_SHARE = 0.90  # Voita et al.: argmax on one relative position for >= 90% of words
DETECTOR_PATTERNS = ("previous_token_head", "duplicate_token_head", "induction_head")


def positional_frame(model_name: str, sc: Scored, threshold: float = POSITIONAL_SHARE) -> pd.DataFrame:
    """Voita's table from a `collect` pass: top offset = the most frequent argmax offset; share = its
    count over the words where that offset lies inside the sentence (so a previous-word head is not
    penalised for the first word)."""
    top = sc.offset_hist.argmax(1)
    n_valid = sc.offset_valid[top]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(n_valid > 0, sc.offset_hist.max(1) / np.maximum(n_valid, 1), np.nan)
    layer = np.repeat(sc.layers, sc.n_heads)
    head = np.tile(np.arange(sc.n_heads), len(sc.layers))
    return pd.DataFrame(
        {
            "model": model_name,
            "layer": layer,
            "head": head,
            "top_offset": top - (sc.max_n - 1),
            "share": share,
            "positional": share >= threshold,
            "n_words": sc.n_rows,
            "n_valid": n_valid,
            "special_mass": sc.special / max(sc.n_rows, 1),
        }
    )


def positional_heads(
    model,
    dataset: Dataset,
    capture=None,
    threshold: float = POSITIONAL_SHARE,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Voita et al.'s (2019) positional heads.

    Parameters
    ----------
    model : a `probekit.Model` (only ``name`` and ``is_causal`` are read when ``capture`` is given).
    dataset : the sentences to read (no gold trees needed).
    capture : an existing capture of ``dataset``; default `probekit.activations.capture` (disk-cached).
    threshold : the share of words on one offset that makes a head positional (Voita: 0.9).
    batch_size, progress : passed to the capture.

    Returns
    -------
    pandas.DataFrame
        One row per head: ``model, layer, head, top_offset, share, positional, n_words, n_valid,
        special_mass``; ``positional`` = argmax (self included) on one relative offset for >=
        ``threshold`` of the words, ``special_mass`` = mean attention to the sink/[CLS]/[SEP].

    Examples
    --------
    >>> import probekit as pk
    >>> pos = pk.positional_heads(pk.load_model("tiny-bert"), pk.load_dataset("template:svo_adj?n=8"),
    ...                           progress=False)
    >>> list(pos.columns[:6])
    ['model', 'layer', 'head', 'top_offset', 'share', 'positional']
    """
    cap = capture if capture is not None else capture_attention(model, dataset, batch_size, progress)
    check_capture(cap, dataset)
    empty = pd.DataFrame(
        {
            c: pd.Series(dtype=t)
            for c, t in [("sentence_idx", int), ("src", int), ("tgt", int), ("self_ok", bool)]
        }
    )
    scored = collect(cap, empty, bool(model.is_causal), progress, desc=f"positional heads {model.name}")
    return positional_frame(model.name, scored, threshold)


def detector_scores(model, texts: list[str], patterns=DETECTOR_PATTERNS) -> pd.DataFrame:
    """TransformerLens ``detect_head`` scores per head, on the bridge's tokens and attention patterns.

    Every text is repeated twice (``"text text"``, so duplicate and induction patterns exist), tokenized
    by the bridge and run once, as one sequence, through capture's forward (`forward_for`: the same
    patterns as the bridge's ``run_with_cache``, bit for bit, without its LM head); ``detect_head`` scores
    all patterns from that cache. ``exclude_bos=True``; mean over texts. Texts too long for the context
    are skipped.

    Parameters
    ----------
    model : a `probekit.Model` (its ``bridge`` is used, with the bridge's own tokenization).
    texts : sentences to score on.
    patterns : ``detect_head`` pattern names.

    Returns
    -------
    pandas.DataFrame
        ``layer, head, tl_<pattern without "_head">...``.

    Examples
    --------
    >>> import probekit as pk
    >>> from probekit.analyses.heads import detector_scores
    >>> det = detector_scores(pk.load_model("tiny-llama"), ["The cat sat on the mat."])
    >>> list(det.columns)
    ['layer', 'head', 'tl_previous_token', 'tl_duplicate_token', 'tl_induction']
    """
    import torch
    from transformer_lens.ActivationCache import ActivationCache
    from transformer_lens.head_detector import detect_head

    from probekit.activations.forward import forward_for

    bridge = model.bridge
    if not texts:
        raise ProbekitError(
            "no texts for detect_head", where="detector_scores", fix="pass at least one sentence"
        )
    n_ctx = int(bridge.cfg.n_ctx)
    doubled = [(text, bridge.to_tokens(text)) for text in (f"{t} {t}" for t in texts)]  # tokens [1, pos]
    doubled = [(text, tokens) for text, tokens in doubled if 1 < tokens.shape[-1] < n_ctx]
    if not doubled:
        raise ProbekitError("every text is too long for detect_head", where="detector_scores")
    names = {hooks.block(layer, hooks.PATTERN_SUFFIX) for layer in range(model.n_layers)}
    sums: dict[str, Any] = {}
    with torch.inference_mode(), forward_for(model, names, model.n_layers) as forward:
        for text, tokens in doubled:  # one forward per text, to the last block's pattern, for every pattern
            found = forward(tokens, torch.ones_like(tokens))  # {hook name: [1, head, q, k]}
            cache = ActivationCache({k: v[0] for k, v in found.items()}, bridge, has_batch_dim=False)
            for pattern in patterns:
                score = (
                    detect_head(bridge, text, pattern, cache=cache, exclude_bos=True).float().cpu().numpy()
                )
                sums[pattern] = sums.get(pattern, 0) + score / len(doubled)  # [layer, head]
            del cache
    out = {p.removesuffix("_head"): sums[p] for p in patterns}
    n_layers, n_heads = next(iter(out.values())).shape
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    frame = {"layer": layer.ravel(), "head": head.ravel()}
    frame.update({f"tl_{k}": v.ravel().astype(float) for k, v in out.items()})
    return pd.DataFrame(frame)
