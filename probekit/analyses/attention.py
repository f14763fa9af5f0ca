"""Claim C1: "an attention weight is softmax(q·k/√d_k)", checked against the model's own patterns.

`check_attention` runs one sentence, takes each layer's queries and keys as the model used them
(``attn.hook_rot_q``/``hook_rot_k`` after rotary embedding where the model has it, else
``attn.hook_q``/``hook_k``), recomputes

    pattern[h, q, k] = softmax_k( cap(q_h · k_{g(h)} * scale) + mask[q, k] )

and compares with ``attn.hook_pattern``. ``scale`` is 1/sqrt(d_head) except where the config says
otherwise: Gemma 2/3 scale by ``query_pre_attn_scalar ** -0.5`` (``Model.attn_scale``; Gemma 3 270M has
query_pre_attn_scalar = head_dim = 256, so both are 1/16 there, while the tiny test model sets them apart
so that the check can tell them apart). ``cap(s) = c * tanh(s / c)`` where the config has an
``attn_logit_softcapping`` c (Gemma 2; Gemma 3 has none), else the identity. Gemma 3 normalises q and k
(RMSNorm) before rotary; the rotary hooks hold q and k after both, so the check covers those norms as the
model applied them. ``g(h) = h // (n_heads / n_kv_heads)`` is grouped-query
attention (SmolLM2: 9 query heads share 3 key/value heads, each kv head serving 3 consecutive query
heads); ``mask`` is ``-inf`` where `Model.visible` says the query cannot see the key: above the
diagonal for causal models, and also further back than the window on sliding-window layers (Gemma 3: five
sliding layers of window 512 for every global one); zero for encoders (a single unpadded sentence). The
table names each layer's type and window, so a row shows which mask it verified; a sliding layer only
tests its window when the sentence is longer than the window (``window_binds``).
Each head has its own W_Q; under GQA, W_K and W_V are shared within a group.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import einops
import pandas as pd
import torch

from probekit.activations import hooks
from probekit.activations.align import align, as_sentences
from probekit.errors import ProbekitError
from probekit.report import write_tables


@dataclass(frozen=True)
class AttentionCheck:
    """Claim C1 for one model: ``table`` has one row per layer with the max abs difference between the
    recomputed and the model's own pattern (`check_attention`)."""

    model: str
    table: pd.DataFrame

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``check_attention.csv``, ``.md`` and ``.tex`` into ``folder``."""
        folder = Path(folder)
        write_tables({"check_attention": self.table}, folder)
        return [folder / f"check_attention.{ext}" for ext in ("csv", "md", "tex")]


def analyze_attention(model, sentence) -> AttentionCheck:
    """Claim C1 as a result object: `check_attention` wrapped in an `AttentionCheck` (``.write(folder)``).

    Parameters
    ----------
    model : a `probekit.Model` with eager attention.
    sentence : a sentence (text, `Sentence`, or a one-sentence dataset).

    Returns
    -------
    AttentionCheck

    Examples
    --------
    >>> import probekit as pk
    >>> res = analyze_attention(pk.load_model("tiny-bert"), "The cat sat.")
    >>> bool(res.table.max_abs_diff.max() < 1e-5)
    True
    """
    return AttentionCheck(model=model.name, table=check_attention(model, sentence))


def check_attention(model, sentence) -> pd.DataFrame:
    """Recompute every layer's attention pattern from q and k; one row per layer with the max abs diff.

    Parameters
    ----------
    model : a `probekit.Model` with eager attention.
    sentence : a sentence (text, `Sentence`, or a one-sentence dataset); the first one is used.

    Returns
    -------
    pandas.DataFrame
        ``model, layer, layer_type, window, window_binds, q_hook, k_hook, n_heads, n_kv_heads, scale,
        softcap, causal_mask, max_abs_diff``.

    Examples
    --------
    >>> import probekit as pk
    >>> table = pk.check_attention(pk.load_model("tiny-llama"), "The cat sat.")
    >>> table[["layer", "n_heads", "n_kv_heads", "causal_mask"]].values.tolist()
    [[0, 4, 2, True], [1, 4, 2, True]]
    """
    enc = align(model, as_sentences(sentence)[0])
    input_ids = torch.tensor([enc.input_ids], device=model.device)  # [1, pos]
    hook_names = set(model.bridge.hook_dict) if hasattr(model.bridge, "hook_dict") else set()
    rotary = hooks.attn(0, "hook_rot_q") in hook_names
    q_name, k_name = ("hook_rot_q", "hook_rot_k") if rotary else ("hook_q", "hook_k")
    if hooks.pattern(0) not in hook_names:
        raise ProbekitError(
            f"{model.name} exposes no attn.hook_pattern", fix="load the model with eager attention"
        )
    wanted = {
        hooks.attn(layer, n) for layer in range(model.n_layers) for n in (q_name, k_name, "hook_pattern")
    }
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(input_ids, names_filter=lambda name: name in wanted)
    group = model.n_heads // model.n_kv_heads
    rows = []
    for layer in range(model.n_layers):
        q = cache[hooks.attn(layer, q_name)][0].double()  # [pos, head, d_head]
        k = cache[hooks.attn(layer, k_name)][0].double()  # [pos, kv_head, d_head]
        if k.shape[1] != q.shape[1]:
            k = einops.repeat(k, "pos kv d -> pos (kv group) d", group=group)
        scale = model.attn_scale or 1 / math.sqrt(q.shape[-1])
        scores = einops.einsum(q, k, "q head d, k head d -> head q k")  # [head, q, k]
        if math.isclose(scale, 1 / math.sqrt(q.shape[-1]), rel_tol=1e-12):
            scores = scores / math.sqrt(q.shape[-1])
        else:  # Gemma's query_pre_attn_scalar ** -0.5
            scores = scores * scale
        if model.attn_softcap:
            scores = model.attn_softcap * torch.tanh(scores / model.attn_softcap)
        n = scores.shape[-1]
        window = model.window(layer)
        if model.is_causal:
            unseen = ~model.visible(layer, n).to(scores.device)  # [q, k]: future, or outside the window
            scores = scores.masked_fill(unseen, float("-inf"))
        recomputed = scores.softmax(-1)  # [head, q, k]
        actual = cache[hooks.pattern(layer)][0].double()  # [head, q, k]
        rows.append(
            {
                "model": model.name,
                "layer": layer,
                "layer_type": model.layer_types[layer] if model.layer_types else "full_attention",
                "window": window if window is not None else "none",
                "window_binds": window is not None and n > window,
                "q_hook": q_name,
                "k_hook": k_name,
                "n_heads": q.shape[1],
                "n_kv_heads": cache[hooks.attn(layer, k_name)].shape[2],
                "scale": _scale_text(scale, q.shape[-1]),
                "softcap": model.attn_softcap if model.attn_softcap else "none",
                "causal_mask": model.is_causal,
                "max_abs_diff": float((recomputed - actual).abs().max()),
            }
        )
    return pd.DataFrame(rows)


def _scale_text(scale: float, d_head: int) -> str:
    """``1/sqrt(d_head)`` when that is the scale, else the scale's own ``1/sqrt(s)``."""
    if math.isclose(scale, 1 / math.sqrt(d_head), rel_tol=1e-12):
        return f"1/sqrt({d_head})"
    return f"1/sqrt({round(scale**-2, 6):g})"
