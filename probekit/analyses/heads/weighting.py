"""Alternative head scores: norm-weighted attention (Kobayashi et al. 2020) and attention rollout (Abnar &
Zuidema 2020), as word-level attention in the layout the head collection reads.

- ``raw``: the attention pattern ``alpha_ij`` itself (what `probekit.activations.capture` stores).
- ``norm``: Kobayashi et al. (2020), "Attention is not only a weight: analyzing transformers with vector
  norms": head h's output at position i is ``sum_j alpha_ij f_h(x_j)`` with ``f_h(x_j) = v_j W_O[h]``
  (``v_j = x_j W_V + b_V``, the head's value vector; ``b_O`` is added after the sum and is no token's). The
  weight of token j is ``alpha_ij * ||f_h(x_j)||``. Those rows do not sum to 1; probekit renormalises
  every token row to 1 (`norm_weighted`), so that the head scores (argmax, attention mass) and the sink
  mass stay on the same scale as under ``raw``.
- ``rollout``: Abnar & Zuidema (2020), "Quantifying attention flow in transformers": layer l's attention
  with the residual, ``A~_l = rownorm(0.5 * mean_h A_l,h + 0.5 * I)``, multiplied across the layers
  below, ``R_l = A~_l ... A~_0``. Per head (`rollout`): head h of layer l composed with the rollout of
  the layers below, ``R_l,h = A_l,h R_(l-1)`` (``R_(-1) = I``): how much of what head h reads at
  position i traces back, through the lower layers' attention and residual paths, to input token j. It
  equals ``raw`` in layer 0; its rows sum to 1.

Token rows are pooled to words by `probekit.activations.align.word_attention` (Clark et al. 2019: sum
over the target word's tokens, mean over the source word's tokens, sink/[CLS]/[SEP] dropped and their
mass kept as ``special_mass``), exactly as the capture pools raw attention. `weighted_attention` returns
an object with the capture's reading interface (``attention(i)``, ``special_mass(i)``, ``n_words``,
``attn_layers``, ``n_heads``, ``sentences``) computed on the fly in fixed batches of consecutive
sentences (memory: one batch). GQA models (SmolLM2, Gemma 3): query head h reads key/value head
``h // (n_heads / n_kv_heads)``. Method: ``docs/methods/weighting.md``.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from probekit.activations import hooks
from probekit.activations.align import align_many, as_sentences, pad_batch, word_attention
from probekit.activations.forward import stop_here
from probekit.errors import ProbekitError

#: The head-score weightings `probekit.analyses.heads.analyze_heads` accepts (``raw`` is the default).
WEIGHTINGS: tuple[str, ...] = ("raw", "norm", "rollout")
#: Largest abs difference (relative to the largest |z|) allowed between ``hook_z`` and ``pattern @ hook_v``:
#: the check that the values and W_O read here are the ones the head uses.
Z_TOLERANCE = {"float32": 1e-4}
Z_TOLERANCE_LOW_PRECISION = 3e-2


def check_weighting(weighting, where: str = "score_heads(weighting=...)") -> str:
    """Return ``weighting`` if it is one of `WEIGHTINGS`, else raise `ProbekitError` naming the choices.

    Examples
    --------
    >>> check_weighting("norm")
    'norm'
    """
    if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
        raise ProbekitError(
            f"unknown attention weighting {weighting!r}",
            where=where,
            fix=f"use one of {', '.join(WEIGHTINGS)}",
        )
    return weighting


def kv_heads(n_heads: int, n_kv_heads: int) -> np.ndarray:
    """``[n_heads]``: the key/value head each query head reads (grouped-query attention, Ainslie et al.
    2023); the identity when every head has its own.

    Examples
    --------
    >>> kv_heads(4, 2).tolist()
    [0, 0, 1, 1]
    """
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ProbekitError(
            f"{n_heads} query heads cannot share {n_kv_heads} key/value heads evenly", where="kv_heads"
        )
    return np.arange(n_heads) // (n_heads // n_kv_heads)


def value_norms(v, w_o, kv=None) -> np.ndarray:
    """``||f_h(x_j)|| = ||v_j W_O[h]||`` for every head and token (Kobayashi et al. 2020).

    Parameters
    ----------
    v : array ``[k_tok, kv_head, d_head]``, the value vectors (``hook_v``, bias included).
    w_o : array ``[head, d_head, d_model]``, the output projection per head.
    kv : ``[head]`` key/value head of each query head (`kv_heads`); default: the identity.

    Returns
    -------
    numpy.ndarray
        ``[head, k_tok]`` float32.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.array([[[3.0, 4.0]], [[1.0, 0.0]]])               # [k_tok=2, kv_head=1, d_head=2]
    >>> value_norms(v, np.eye(2)[None]).tolist()                 # W_O = identity
    [[5.0, 1.0]]
    """
    v = torch.as_tensor(np.asarray(v, dtype=np.float32))
    w_o = torch.as_tensor(np.asarray(w_o, dtype=np.float32))
    kv = np.arange(w_o.shape[0]) if kv is None else np.asarray(kv)
    fx = torch.einsum("khd,hdm->hkm", v[:, torch.as_tensor(kv)], w_o)  # [head, k_tok, d_model]
    return torch.linalg.vector_norm(fx, dim=-1).numpy()


def norm_weighted(pattern, v, w_o, kv=None, renormalize: bool = True) -> np.ndarray:
    """Kobayashi et al.'s (2020) norm-weighted attention ``alpha_ij * ||f_h(x_j)||`` of one layer.

    Parameters
    ----------
    pattern : array ``[head, q_tok, k_tok]``, the attention pattern (rows sum to 1).
    v : array ``[k_tok, kv_head, d_head]``, the value vectors (``hook_v``).
    w_o : array ``[head, d_head, d_model]``.
    kv : ``[head]`` key/value head of each query head (`kv_heads`); default: the identity.
    renormalize : rescale each row to sum to 1 (what the head scores use); ``False`` gives Kobayashi's
        raw norms ``||alpha_ij f_h(x_j)||``.

    Returns
    -------
    numpy.ndarray
        ``[head, q_tok, k_tok]`` float32.

    Examples
    --------
    >>> import numpy as np
    >>> pattern = np.array([[[1.0, 0.0], [0.5, 0.5]]])          # [head=1, q_tok=2, k_tok=2]
    >>> v = np.array([[[3.0, 4.0]], [[1.0, 0.0]]])               # ||v_0|| = 5, ||v_1|| = 1
    >>> [round(float(x), 4) for x in norm_weighted(pattern, v, np.eye(2)[None])[0, 1]]  # [2.5, 0.5] / 3
    [0.8333, 0.1667]
    >>> norm_weighted(pattern, v, np.eye(2)[None], renormalize=False)[0, 1].tolist()
    [2.5, 0.5]
    """
    pattern = np.asarray(pattern, dtype=np.float32)
    out = pattern * value_norms(v, w_o, kv)[:, None, :]  # [head, q_tok, k_tok]
    if renormalize:
        out = out / np.clip(out.sum(-1, keepdims=True), 1e-30, None)
    return out.astype(np.float32)


def rollout(patterns) -> np.ndarray:
    """Per-head attention rollout (Abnar & Zuidema 2020) over layers ``0..L-1`` of one sentence.

    ``A~_l = rownorm(0.5 * mean_h A_l,h + 0.5 * I)`` is layer l's attention with its residual connection;
    head h of layer l gets ``A_l,h @ A~_(l-1) @ ... @ A~_0`` (layer 0: its own pattern).

    Parameters
    ----------
    patterns : array ``[layer, head, q_tok, k_tok]`` of every layer from 0 up, rows summing to 1.

    Returns
    -------
    numpy.ndarray
        ``[layer, head, q_tok, k_tok]`` float32, rows summing to 1.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1, 0], [0.5, 0.5]]], [[[1, 0], [0, 1.0]]]])   # [layer=2, head=1, 2, 2]
    >>> rollout(a)[1, 0].tolist()           # layer 1's head reads token 1, which is 0.25 token 0
    [[1.0, 0.0], [0.25, 0.75]]
    """
    a = np.asarray(patterns, dtype=np.float64)
    n = a.shape[-1]
    below = np.eye(n)  # [q_tok, k_tok]: the rollout of the layers below (none: identity)
    out = np.empty_like(a)
    for layer in range(a.shape[0]):
        out[layer] = a[layer] @ below  # [head, q_tok, k_tok] @ [k_tok, k_tok]
        mixed = 0.5 * a[layer].mean(0) + 0.5 * np.eye(n)
        mixed /= mixed.sum(-1, keepdims=True)
        below = mixed @ below
    return out.astype(np.float32)


class WeightedAttention:
    """Word attention of ``sentences`` under one weighting, computed on the fly (see `weighted_attention`).

    Reads like a `probekit.activations.capture.Capture` with attention: ``attention(i)  # [layer, head,
    from_word, to_word]``, ``special_mass(i)  # [layer, head, from_word]``, ``n_words``, ``attn_layers``
    (every layer), ``n_heads``, ``sentences``, plus ``weighting``. Sentences are run in fixed batches of
    ``batch_size`` consecutive sentences; the last batch read is kept, so reading the sentences in order
    runs each batch once and the numbers never depend on the order of reading.
    """

    def __init__(self, model, sentences, weighting: str, batch_size: int = 16, progress: bool = True):
        from probekit.activations.capture import check_windows

        self.weighting = check_weighting(weighting, where="weighted_attention")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ProbekitError(f"batch_size must be a positive integer, not {batch_size!r}")
        self.model = model
        self.sentences = as_sentences(sentences)
        self.encoded = list(align_many(model, self.sentences))
        self.attn_layers = list(range(model.n_layers))
        check_windows(model, self.encoded, self.attn_layers)
        self.n_heads = int(model.n_heads)
        self.n_words = np.array([len(e.word_spans) for e in self.encoded], dtype=np.int64)
        self.batch_size = batch_size
        self._bar = tqdm(
            total=len(self.encoded),
            desc=f"{weighting} attention {model.name}",
            unit="sent",
            disable=not progress,
            leave=False,
        )
        self._start: int | None = None
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self.encoded)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < len(self.encoded):
            raise IndexError(i)
        start = i - i % self.batch_size
        if start != self._start:
            encs = self.encoded[start : start + self.batch_size]
            self._rows = []  # free the previous batch first
            patterns = token_attention(self.model, encs, (self.weighting,))[self.weighting]
            self._rows = [word_attention(p, e) for p, e in zip(patterns, encs, strict=True)]
            self._start = start
            self._bar.update(len(encs))
            if start + len(encs) >= len(self.encoded):
                self._bar.close()
        return self._rows[i - start]

    def attention(self, i: int) -> np.ndarray:
        """Word attention of sentence i: ``[layer, head, from_word, to_word]``."""
        return self._load(i)[0]

    def special_mass(self, i: int) -> np.ndarray:
        """Weighted attention each word sends to the sink/[CLS]/[SEP]: ``[layer, head, n_words]``."""
        return self._load(i)[1]


def weighted_attention(
    model, sentences, weighting: str = "norm", batch_size: int = 16, progress: bool = True
):
    """Word attention of every layer and head under ``weighting`` (`WEIGHTINGS`), for the head scores.

    Parameters
    ----------
    model : a `probekit.Model`.
    sentences : a Dataset, Sentences, word lists or strings.
    weighting : ``raw``, ``norm`` (Kobayashi et al. 2020, rows renormalised) or ``rollout`` (Abnar &
        Zuidema 2020, per head); see the module docstring.
    batch_size : consecutive sentences per forward pass.
    progress : show a tqdm bar.

    Returns
    -------
    WeightedAttention
        Computed batch by batch when read; pass it as ``capture=`` to `probekit.analyses.heads.analyze_heads`.

    Examples
    --------
    >>> import probekit as pk
    >>> wa = pk.weighted_attention(pk.load_model("tiny-llama"), ["The cat sat ."], "norm", progress=False)
    >>> att, sink = wa.attention(0), wa.special_mass(0)     # [layer, head, word, word], [layer, head, word]
    >>> att.shape, bool(abs(att.sum(-1) + sink - 1).max() < 1e-5)
    ((2, 4, 4, 4), True)
    """
    return WeightedAttention(model, sentences, weighting, batch_size=batch_size, progress=progress)


def token_attention(model, encs, weightings=WEIGHTINGS) -> dict[str, list[np.ndarray]]:
    """One forward pass over ``encs`` (right-padded): per weighting, one ``[layer, head, q_tok, k_tok]``
    float32 array per sentence (its own tokens only), every layer.

    ``norm`` reads ``hook_v`` and the bridge's ``W_O``; it first checks that ``pattern @ hook_v``
    reproduces ``hook_z`` (`Z_TOLERANCE`), else `ProbekitError` (a model whose values are changed
    after ``hook_v`` is not supported)."""
    weightings = tuple(check_weighting(w, where="token_attention") for w in weightings)
    n_layers = model.n_layers
    want_v = "norm" in weightings
    names = {hooks.pattern(layer) for layer in range(n_layers)}
    if want_v:
        names |= {hooks.attn(layer, "hook_v") for layer in range(n_layers)}
        names |= {hooks.z(layer) for layer in range(n_layers)}
    kv = kv_heads(model.n_heads, model.n_kv_heads)
    input_ids, attention_mask = pad_batch(list(encs), model.pad_token_id)
    stops = [(name, stop_here) for name in hooks.HEAD_ENTRY if name in model.bridge.hook_dict]
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=stops):
        _, cache = model.bridge.run_with_cache(
            input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            names_filter=names.__contains__,
        )
    n_tok = [e.n_tokens for e in encs]
    pattern = [cache[hooks.pattern(layer)].float().cpu().numpy() for layer in range(n_layers)]  # [B,H,T,T]
    out: dict[str, list[np.ndarray]] = {w: [] for w in weightings}
    raw = [np.stack([p[b, :, :n, :n] for p in pattern]) for b, n in enumerate(n_tok)]  # [L, H, n, n] each
    if "raw" in weightings:
        out["raw"] = raw
    if "rollout" in weightings:
        out["rollout"] = [rollout(r) for r in raw]
    if want_v:
        per = [[] for _ in encs]  # type: list[list[np.ndarray]]
        for layer in range(n_layers):
            v = cache[hooks.attn(layer, "hook_v")].float().cpu()  # [B, T, kv_head, d_head]
            z = cache[hooks.z(layer)].float().cpu()  # [B, T, head, d_head]
            w_o = model.bridge.blocks[layer].attn.W_O.detach().float().cpu().numpy()  # [head, d_head, d_m]
            _check_values(model, layer, torch.from_numpy(pattern[layer]), v, z, kv, n_tok)
            for b, n in enumerate(n_tok):
                per[b].append(norm_weighted(pattern[layer][b, :, :n, :n], v[b, :n].numpy(), w_o, kv))
        out["norm"] = [np.stack(p) for p in per]
    return out


def _check_values(model, layer, pattern, v, z, kv, n_tok) -> None:
    """``pattern @ v`` must reproduce ``hook_z`` on every sentence's own tokens."""
    recomputed = torch.einsum("bhqk,bkhd->bqhd", pattern, v[:, :, torch.as_tensor(kv)])  # [B, T, head, d]
    worst = 0.0
    for b, n in enumerate(n_tok):
        diff = float((recomputed[b, :n] - z[b, :n]).abs().max())
        worst = max(worst, diff / max(float(z[b, :n].abs().max()), 1e-6))
    tol = Z_TOLERANCE.get(getattr(model, "dtype", "float32"), Z_TOLERANCE_LOW_PRECISION)
    if not worst <= tol:
        raise ProbekitError(
            f"layer {layer}: pattern @ hook_v does not reproduce hook_z (max relative diff {worst:.2g} > "
            f"{tol:g}), so the value vectors read here are not the ones the head sums",
            where="weighting='norm'",
            fix="this model's attention variant is not supported by the norm weighting; use raw or rollout",
        )
