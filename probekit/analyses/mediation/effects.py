"""Per-head effects of a counterfactual input: total, indirect (all positions / critical position) and
path-specific (Vig et al. 2020, arXiv:2004.12265; Finlayson et al. 2021; Wang et al. 2022, path patching).

For clean prompt ``x`` and counterfactual ``x'`` with metric ``M``:

- total effect ``TE = M(x') - M(x)``;
- indirect effect of head h, all positions: ``M(x | z_h <- z_h(x')) - M(x)``, its ``hook_z`` output
  from the counterfactual run written into the clean run at every position;
- the same at the critical position only (the prompt's last token, where the verb is predicted);
- path-specific effect source -> critical position through h: the head's output at the critical
  position recomputed with the keys and values of the *source* positions (the tokens where ``x`` and
  ``x'`` differ) taken from the counterfactual run, everything else clean. Under grouped-query
  attention one key/value head serves several query heads; the recomputation changes only the one
  query head's output (its own softmax over the patched keys), not the other query heads of its group.

All three are `Patch` interventions of the engine (``probekit.analyses.interventions``) with different
donor activations, so the fast sweep serves them. Encoders (no LM head) read a probe instead of logits
(`ProbeReadout`). See ``docs/methods/mediation.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from probekit.activations import hooks
from probekit.analyses.interventions.engine import run_sweep
from probekit.analyses.interventions.heads import Head, heads_by_layer
from probekit.analyses.interventions.interventions import DonorActivations, Patch, ZeroAblation
from probekit.analyses.interventions.layout import padded
from probekit.analyses.interventions.patching import PatchPairs, patch_plan
from probekit.analyses.interventions.plan import Plan
from probekit.errors import ProbekitError

#: the effects computed per head, in table order
EFFECTS = ("all_positions", "critical_position", "path")
#: the path recomputation must reproduce the clean ``hook_z`` to this max abs difference
RECOMPUTE_TOL = 1e-3


def source_positions(pp: PatchPairs, i: int) -> list[int]:
    """Token positions where item ``i``'s clean and counterfactual prompts differ.

    Examples
    --------
    >>> pp = PatchPairs(["a"], [(0, 5, 6)], [(0, 7, 6)], [1], [2])
    >>> source_positions(pp, 0)
    [1]
    """
    return [t for t, (a, b) in enumerate(zip(pp.clean[i], pp.corrupted[i], strict=True)) if a != b]


def critical_position(pp: PatchPairs, i: int) -> int:
    """The read-out position: ``labels["crit"]`` if set (encoders: the masked verb), else the last token."""
    return int(pp.labels[i].get("crit", len(pp.clean[i]) - 1)) if pp.labels else len(pp.clean[i]) - 1


@dataclass
class Donors:
    """Per item, per effect: ``[len(layers), pos, head, d_head]`` tensors written into the clean run."""

    layers: list[int]
    by_effect: dict[str, list[torch.Tensor]]

    def patch(self, effect: str) -> Patch:
        items = self.by_effect[effect]
        return Patch(DonorActivations(lambda ds: [items[d] for d in ds], self.layers))


def _names(model, layers: Sequence[int]) -> dict[str, list[str]]:
    q, k = ("hook_rot_q", "hook_rot_k") if model.is_causal else ("hook_q", "hook_k")
    return {
        "z": [hooks.z(layer) for layer in layers],
        "q": [hooks.attn(layer, q) for layer in layers],
        "k": [hooks.attn(layer, k) for layer in layers],
        "v": [hooks.attn(layer, "hook_v") for layer in layers],
        "pattern": [hooks.pattern(layer) for layer in layers],
    }


def _groups(pp: PatchPairs, items: Sequence[int]) -> list[list[int]]:
    """Items grouped by token length (no padding), in order."""
    out: dict[int, list[int]] = {}
    for i in items:
        out.setdefault(len(pp.clean[i]), []).append(i)
    return [out[n] for n in sorted(out)]


def _ids(model, seqs) -> dict:
    ids = torch.tensor(seqs, device=model.device)
    return {"input": ids, "attention_mask": None if model.is_causal else torch.ones_like(ids)}


def make_donors(
    model, pp: PatchPairs, items: Sequence[int], layers: Sequence[int], effects: Sequence[str] = EFFECTS
) -> Donors:
    """The donor activations of ``effects`` (default: all three `EFFECTS`) for ``items`` (indexed
    0..len(items)-1). ``all_positions`` alone needs only the counterfactual run's ``hook_z``.

    The path donor is the clean ``hook_z`` except at the critical position, where each query head's
    output is recomputed as ``softmax(q.k'/sqrt(d_head)) v'`` with the source positions' keys and values
    from the counterfactual run; the recomputation with the clean keys and values must reproduce the
    clean pattern and ``hook_z`` (else `ProbekitError`).
    """
    layers = sorted(set(layers))
    names = _names(model, layers)
    only_all = set(effects) <= {"all_positions"}
    wanted = set(names["z"]) if only_all else {n for ns in names.values() for n in ns}
    group = model.n_heads // model.n_kv_heads
    scale = 1.0 / float(np.sqrt(model.d_head))
    out: dict[str, list] = {e: [None] * len(items) for e in (["all_positions"] if only_all else EFFECTS)}
    pos_of = {i: k for k, i in enumerate(items)}
    stop = max(layers) + 1
    with torch.inference_mode():
        for members in _groups(pp, items):
            kw_c, kw_x = (
                _ids(model, [pp.clean[i] for i in members]),
                _ids(model, [pp.corrupted[i] for i in members]),
            )
            kwargs = {
                "names_filter": wanted.__contains__,
                "stop_at_layer": stop if stop < model.n_layers else None,
            }
            _, cx = model.bridge.run_with_cache(
                kw_x["input"], attention_mask=kw_x["attention_mask"], **kwargs
            )
            if only_all:
                for b, i in enumerate(members):
                    out["all_positions"][pos_of[i]] = torch.stack(
                        [cx[names["z"][li]][b].float().cpu() for li in range(len(layers))]
                    )
                continue
            _, cc = model.bridge.run_with_cache(
                kw_c["input"], attention_mask=kw_c["attention_mask"], **kwargs
            )
            for b, i in enumerate(members):
                src, crit = source_positions(pp, i), critical_position(pp, i)
                z_all, z_crit, z_path = [], [], []
                for li in range(len(layers)):
                    zc = cc[names["z"][li]][b].float().cpu()  # [pos, head, d_head]
                    zx = cx[names["z"][li]][b].float().cpu()
                    crit_only = zc.clone()
                    crit_only[crit] = zx[crit]
                    path = zc.clone()
                    path[crit] = _path_z(
                        cc, cx, names, li, b, src, crit, group, scale, zc[crit], model.is_causal
                    )
                    z_all.append(zx)
                    z_crit.append(crit_only)
                    z_path.append(path)
                k = pos_of[i]
                out["all_positions"][k] = torch.stack(z_all)
                out["critical_position"][k] = torch.stack(z_crit)
                out["path"][k] = torch.stack(z_path)
    return Donors(layers, out)


def _path_z(cc, cx, names, li, b, src, crit, group, scale, z_clean_crit, causal: bool) -> torch.Tensor:
    """``[head, d_head]``: each query head's output at ``crit`` with counterfactual keys/values at ``src``.

    The scores ``q.k / sqrt(d_head)`` are recomputed (causal models: keys after ``crit`` masked); with
    the clean keys and values they must reproduce the clean pattern and ``hook_z`` (else `ProbekitError`).
    """
    q = cc[names["q"][li]][b, crit].float().cpu()  # [head, d_head]
    k = cc[names["k"][li]][b].float().cpu()  # [pos, kv_head, d_head]
    v = cc[names["v"][li]][b].float().cpu()
    pattern = cc[names["pattern"][li]][b, :, crit].float().cpu()  # [head, key_pos]
    kv = torch.arange(q.shape[0]) // group  # the key/value head of each query head
    visible = torch.zeros(k.shape[0], dtype=torch.bool)
    visible[: crit + 1 if causal else k.shape[0]] = True

    def attend(keys, values):  # keys, values: [pos, kv_head, d_head] -> [head, d_head]
        s = torch.einsum("hd,phd->hp", q, keys[:, kv]) * scale
        s = s.masked_fill(~visible, float("-inf"))
        a = torch.softmax(s, dim=-1)
        return a, torch.einsum("hp,phd->hd", a, values[:, kv])

    a, recomputed = attend(k, v)
    diff = max(float((a - pattern).abs().max()), float((recomputed - z_clean_crit).abs().max()))
    if not diff <= RECOMPUTE_TOL:
        raise ProbekitError(
            f"recomputing a head's pattern and output from q, k, v does not reproduce hook_pattern / hook_z "
            f"(max abs diff {diff:.2g})",
            where="path-specific effect",
            fix="this attention variant is not supported for path patching; use the other effects",
        )
    if not src:
        return z_clean_crit
    k2, v2 = k.clone(), v.clone()
    k2[src] = cx[names["k"][li]][b, src].float().cpu()
    v2[src] = cx[names["v"][li]][b, src].float().cpu()
    return attend(k2, v2)[1]


# --------------------------------------------------------------------------------------------------
# read-outs


def logit_plan(model, pp: PatchPairs, items: Sequence[int], counterfactual: bool = False) -> Plan:
    """One plan item per pair: ``logit_diff = log p(good) - log p(bad)`` at the prompt's last position."""
    return patch_plan(model, pp, pp.corrupted if counterfactual else pp.clean, items, "mediate")


@dataclass
class ProbeReadout:
    """An encoder's read-out: ``sign[i] * probe.decision_function(resid)`` at the critical position,
    where ``resid`` is the residual stream entering block ``layer`` (``layer == n_layers``: the last
    block's output) and ``sign[i]`` is +1 when the clean item's label is the probe's class 1."""

    probe: Any  # a fitted classifier with decision_function (sklearn API)
    layer: int

    def hook_name(self, model) -> str:
        return (
            hooks.resid(self.layer, "resid_pre")
            if self.layer < model.n_layers
            else hooks.resid(model.n_layers - 1, "resid_post")
        )


def residuals(
    model, pp: PatchPairs, items: Sequence[int], layer: int, counterfactual: bool = False
) -> np.ndarray:
    """``[item, d_model]``: the residual stream at each item's critical position (`ProbeReadout`)."""
    name = ProbeReadout(None, layer).hook_name(model)
    out = np.zeros((len(items), model.d_model))
    pos_of = {i: k for k, i in enumerate(items)}
    with torch.inference_mode():
        for members in _groups(pp, items):
            kw = _ids(model, [(pp.corrupted if counterfactual else pp.clean)[i] for i in members])
            _, cache = model.bridge.run_with_cache(
                kw["input"], attention_mask=kw["attention_mask"], names_filter=[name].__contains__
            )
            for b, i in enumerate(members):
                out[pos_of[i]] = cache[name][b, critical_position(pp, i)].double().cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------------
# sweeps


@dataclass
class Effects:
    """Per-item metric values on the report items: ``clean``, ``counterfactual``  # [item];
    ``patched[effect]``  # [spec, item]."""

    clean: np.ndarray
    counterfactual: np.ndarray
    patched: dict[str, np.ndarray]


def head_effects(
    model,
    pp: PatchPairs,
    items: Sequence[int],
    specs: list[list[Head]],
    *,
    effects: Sequence[str] = EFFECTS,
    readout: ProbeReadout | None = None,
    sweep: str = "fast",
    max_tokens: int = 2048,
) -> Effects:
    """The metric on ``items``: clean, counterfactual, and clean with each spec's heads patched from the
    counterfactual (one array per effect in ``effects``).

    Causal LMs read ``logit_diff`` with the engine (`run_sweep`, ``sweep`` fast or naive); encoders need
    a `ProbeReadout` and run one forward per spec and length group.

    Examples
    --------
    >>> import probekit as pk
    >>> from probekit.analyses.mediation.pairs import make_pairs
    >>> model = pk.load_model("tiny-llama")
    >>> pp = make_pairs(model, "agreement", n=4)
    >>> res = head_effects(model, pp, [0, 1], [[(0, 1)], [(1, 2)]], effects=["all_positions"])
    >>> res.patched["all_positions"].shape
    (2, 2)
    """
    items = list(items)
    layers = sorted({layer for spec in specs for layer, _ in spec}) or [0]
    for e in effects:
        if e not in EFFECTS:
            raise ProbekitError(f"unknown effect {e!r}", fix=f"use one of {', '.join(EFFECTS)}")
    donors = make_donors(model, pp, items, layers, effects)
    if model.is_causal and readout is None:
        plan = logit_plan(model, pp, items)
        patched, clean = {}, None
        for e in effects:
            res = run_sweep(
                model, plan, specs, donors.patch(e), sweep=sweep, max_tokens=max_tokens, check=False
            )
            clean = res.clean["logit_diff"]
            patched[e] = (
                np.stack([a["logit_diff"] for a in res.ablated]) if specs else np.zeros((0, len(items)))
            )
        cf_plan = logit_plan(model, pp, items, counterfactual=True)
        cf = run_sweep(model, cf_plan, [], ZeroAblation(), sweep="naive").clean["logit_diff"]
        if clean is None:
            clean = run_sweep(model, plan, [], ZeroAblation(), sweep="naive").clean["logit_diff"]
        return Effects(np.asarray(clean), np.asarray(cf), patched)
    if readout is None:
        raise ProbekitError(
            f"{model.name} has no language-model read-out", where="head_effects", fix="pass a ProbeReadout"
        )
    return _probe_effects(model, pp, items, specs, effects, readout, donors)


def _probe_effects(model, pp, items, specs, effects, readout: ProbeReadout, donors: Donors) -> Effects:
    name = readout.hook_name(model)
    stop = min(readout.layer + 1, model.n_layers)
    sign = np.array([1.0 if pp.labels[i]["label"] == 1 else -1.0 for i in items])

    def score(x: np.ndarray) -> np.ndarray:
        return sign * readout.probe.decision_function(x)

    seqs = {cf: [(pp.corrupted if cf else pp.clean)[i] for i in items] for cf in (False, True)}
    width = max(len(x) for x in seqs[False])
    crit = torch.tensor([critical_position(pp, i) for i in items])
    rows = torch.arange(len(items))

    def padded_donor(effect: str, li: int) -> torch.Tensor:  # [row, width, head, d_head], zeros past the end
        out = torch.zeros((len(items), width, model.n_heads, model.d_head))
        for k, z in enumerate(donors.by_effect[effect]):
            out[k, : z.shape[1]] = z[li]
        return out

    def run(spec: list[Head] | None, effect: str, counterfactual: bool = False) -> np.ndarray:
        """One padded forward over all items (the attention mask hides the pads)."""
        ids, mask = padded(seqs[counterfactual], model.pad_token_id, mask=True)
        if mask is None:  # padded returns a mask when asked for one
            raise ProbekitError("no attention mask for the padded batch", where="probe read-out")
        fwd = []
        for layer, hs in heads_by_layer(spec or []).items():
            fwd.append((hooks.z(layer), _writer(padded_donor(effect, donors.layers.index(layer)), list(hs))))
        store: dict[str, torch.Tensor] = {}
        fwd.append((name, _keeper(store)))
        with (
            torch.inference_mode(),
            model.bridge.hooks(fwd_hooks=fwd),
            contextlib.suppress(_StopForwardError),
        ):
            model.bridge(ids.to(model.device), attention_mask=mask.to(model.device), stop_at_layer=stop)
        return score(store["x"][rows, crit].double().cpu().numpy())

    clean = run(None, "")
    cf = run(None, "", counterfactual=True)
    patched = {
        e: np.stack([run(spec, e) for spec in specs]) if specs else np.zeros((0, len(items))) for e in effects
    }
    return Effects(clean, cf, patched)


class _StopForwardError(Exception):
    """Raised by `_keeper` once the read-out is stored: nothing after it (the MLM head) needs to run."""


def _keeper(store: dict[str, torch.Tensor]) -> Callable:
    """A hook that keeps its activation in ``store["x"]`` and stops the forward (`_StopForwardError`)."""

    def hook(x, hook):
        store["x"] = x
        raise _StopForwardError

    return hook


def _writer(rep: torch.Tensor, hs: list[int]) -> Callable:
    def hook(z, hook):
        z = z.clone()
        z[:, :, hs] = rep[:, : z.shape[1], hs].to(z.device, z.dtype)
        return z

    return hook
