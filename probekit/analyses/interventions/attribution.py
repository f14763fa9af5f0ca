"""Attribution patching: a first-order estimate of exact patching for every head at once.

``delta M ~= (z_clean - z_corrupt) . dM/dz`` at the corrupted run (Nanda 2023; Syed, Rager & Conmy 2023,
arXiv:2310.10348), from 2 forwards and 1 backward per batch. `compare_patching` measures how well it
ranks heads against `patch_heads`. See ``docs/methods/interventions.md``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from probekit.activations import hooks
from probekit.analyses.interventions.heads import parse_heads
from probekit.analyses.interventions.layout import padded
from probekit.analyses.interventions.patching import as_patch_pairs, patch_frame
from probekit.errors import ProbekitError


def attribution_patch(
    model,
    data,
    heads="all",
    *,
    max_pairs: int | None = None,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Attribution patching (Nanda 2023; Syed et al. 2023): a first-order estimate of `patch_heads`.

    For each batch: a clean forward caching ``hook_z``, a corrupted forward keeping ``hook_z`` in the
    autograd graph, and one backward of the summed metric; the estimate for head (l, h) and pair b is
    ``sum_{pos, d} (z_clean - z_corrupt)[b, pos, h, d] * dM_b/dz_corrupt[b, pos, h, d]``.

    Parameters
    ----------
    model : probekit.Model (causal, parameters requiring grad).
    data : a `PatchPairs` or a minimal-pair dataset (`make_patch_pairs`).
    heads : ``"all"`` or heads (`parse_heads`).
    max_pairs, batch_size : the first N pairs; pairs per forward.
    n_boot, seed : the bootstrap CI of ``delta`` over pairs.

    Returns
    -------
    pandas.DataFrame
        `patch_heads`'s frame with ``method="attribution"``; ``patched`` is ``corrupted + estimate``.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> frame = attribution_patch(model, pk.load_dataset("template:agreement?n=6"), "1.0", n_boot=10)
    >>> frame["method"].tolist()
    ['attribution']
    """
    pp = as_patch_pairs(model, data, max_pairs)
    hs = parse_heads(model, heads)
    layers = sorted({layer for layer, _ in hs})
    n = len(pp)
    est = np.zeros((model.n_layers, model.n_heads, n))
    clean_m, corr_m = np.zeros(n), np.zeros(n)
    bridge = model.bridge
    t0 = time.perf_counter()
    order = sorted(range(n), key=lambda i: (len(pp.clean[i]), i))
    for s in range(0, n, batch_size):
        idx = order[s : s + batch_size]
        clean = padded([pp.clean[i] for i in idx], model.pad_token_id, mask=False)[0].to(model.device)
        corr = padded([pp.corrupted[i] for i in idx], model.pad_token_id, mask=False)[0].to(model.device)
        last = torch.tensor([len(pp.clean[i]) - 1 for i in idx], device=model.device)
        good = torch.tensor([pp.good[i] for i in idx], device=model.device)
        bad = torch.tensor([pp.bad[i] for i in idx], device=model.device)
        rows = torch.arange(len(idx), device=model.device)

        def metric(logits, rows=rows, last=last, good=good, bad=bad):
            lp = torch.log_softmax(logits[rows, last].float(), dim=-1)
            return lp[rows, good] - lp[rows, bad]

        with torch.inference_mode():
            logits, cache = bridge.run_with_cache(clean, names_filter=hooks.is_z, stop_at_layer=None)
            clean_m[idx] = metric(logits).cpu().numpy()
        store: dict[int, torch.Tensor] = {}

        fwd_hooks = [(hooks.z(layer), _keep(store, layer)) for layer in layers]
        with torch.enable_grad(), bridge.hooks(fwd_hooks=fwd_hooks):
            out = bridge(corr)
            m = metric(out)
            zs = [store[layer] for layer in layers]
            if not all(z.requires_grad for z in zs):
                raise ProbekitError(
                    "attribution patching needs gradients, but hook_z does not require grad",
                    fix="do not freeze the model's parameters (requires_grad=False)",
                )
            grads = torch.autograd.grad(m.sum(), zs)
        corr_m[idx] = m.detach().cpu().numpy()
        for layer, z, g in zip(layers, zs, grads, strict=True):
            dz = cache[hooks.z(layer)] - z.detach()  # [batch, pos, head, d_head]
            contrib = (dz * g).sum(dim=(1, 3))  # [batch, head]; pads are 0 (equal tokens, no gradient)
            est[layer][:, idx] = contrib.T.double().cpu().numpy()
        del store, zs, grads, out
    seconds = time.perf_counter() - t0
    patched = np.stack([corr_m + est[layer, h] for layer, h in hs])
    df = patch_frame(model, hs, clean_m, corr_m, patched, "attribution", n_boot, seed)
    df.attrs.update({"seconds": seconds, "dropped": dict(pp.dropped)})
    return df


def _keep(store: dict[int, torch.Tensor], layer: int):
    """A hook that keeps ``hook_z`` of ``layer`` (in the autograd graph) in ``store``."""

    def hook(z, hook):
        store[layer] = z
        return z

    return hook


def compare_patching(exact: pd.DataFrame, attribution: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Agreement of attribution with exact patching over heads.

    Parameters
    ----------
    exact, attribution : frames of `patch_heads` and `attribution_patch` (matched on layer, head).
    k : size of the top-k sets compared.

    Returns
    -------
    pandas.DataFrame
        One row: Spearman rank correlation of the signed effects (``spearman``, ``spearman_p``) and of
        their sizes (``spearman_abs``, ``spearman_abs_p``), the overlap of the top-k heads by |effect|
        (``topk_overlap``) and its chance level ``k / n_heads``, and both runs' ``seconds``.

    Examples
    --------
    >>> import pandas as pd
    >>> a = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "delta": [0.1, 0.5, -0.2, 0.0]})
    >>> b = a.assign(delta=[0.2, 0.4, -0.3, 0.01])
    >>> round(float(compare_patching(a, b, k=2)["topk_overlap"].iloc[0]), 2)
    1.0
    """
    from probekit.stats import spearman, topk_overlap

    merged = exact.merge(attribution, on=["layer", "head"], suffixes=("_exact", "_attr"))
    if len(merged) < 3:
        raise ProbekitError("need at least 3 heads in both frames to compare", fix="patch more heads")
    a, b = merged["delta_exact"].to_numpy(), merged["delta_attr"].to_numpy()
    rho, p = spearman(a, b)
    rho_abs, p_abs = spearman(np.abs(a), np.abs(b))
    k = min(k, len(merged))
    return pd.DataFrame(
        [
            {
                "n_heads": len(merged),
                "spearman": rho,
                "spearman_p": p,
                "spearman_abs": rho_abs,
                "spearman_abs_p": p_abs,
                "k": k,
                "topk_overlap": topk_overlap(np.abs(a), np.abs(b), k),
                "chance_overlap": k / len(merged),
                "seconds_exact": exact.attrs.get("seconds", np.nan),
                "seconds_attribution": attribution.attrs.get("seconds", np.nan),
            }
        ]
    )
