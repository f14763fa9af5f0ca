"""What an intervention writes into attention heads' outputs, and where.

*Where* is a `HeadSite`: the per-query-head output ``hook_z  # [batch, pos, head, d_head]`` of some heads
of one layer (`probekit.activations.hooks.z`), at every position. *What* is an `Intervention` (in the
manner of pyvene's interventions, Wu et al. 2024): one method, `Intervention.replacement`, gives the
values the selected heads' outputs become in one forward's rows:

- `ZeroAblation`: 0;
- `MeanAblation`: the mean over a reference dataset (the sink position 0 of a causal model gets the
  sink's own mean);
- `ResampleAblation`: another item's activations (Chan et al. 2022);
- `Patch`: the activations of the clean prompt of the same item (activation patching; Vig et al. 2020,
  Meng et al. 2022).

Definitions in ``docs/methods/interventions.md``. The engine (`probekit.analyses.interventions.engine`)
never looks at which intervention it runs, except through `Intervention.item_specific`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import einops
import numpy as np
import torch

from probekit.activations import hooks
from probekit.analyses.interventions.heads import Head, heads_by_layer
from probekit.analyses.interventions.layout import Block, padded
from probekit.analyses.interventions.plan import Plan, reference_sequences
from probekit.errors import ProbekitError

# --------------------------------------------------------------------------------------------------
# where


@dataclass(frozen=True)
class HeadSite:
    """Where to intervene: the outputs of ``heads`` of ``layer`` at every position."""

    layer: int
    heads: tuple[int, ...]

    @property
    def hook_name(self) -> str:
        return hooks.z(self.layer)

    def write(self, z: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
        """Write ``replacement  # [row or 1, >= pos, head, d_head]`` into ``z  # [row, pos, head, d_head]``
        at these heads (in place)."""
        idx = torch.tensor(self.heads, dtype=torch.long)
        rep = replacement[:, : z.shape[1]][:, :, idx].to(z.device, z.dtype)
        z[:, :, idx] = rep.expand(z.shape[0], -1, -1, -1)
        return z

    def hook(self, replacement: torch.Tensor) -> tuple[str, Callable]:
        """A TransformerLens forward hook ``(name, fn)`` writing ``replacement`` at this site."""
        return self.hook_name, lambda z, hook: self.write(z, replacement)


@dataclass(frozen=True)
class StackedHeadSites:
    """Where, for ``copies`` copies of a batch stacked along the batch dimension: copy ``c`` has the
    heads ``h`` of ``layer`` with ``mask[c, h]`` intervened on."""

    layer: int
    mask: torch.Tensor  # [copy, head] bool

    @property
    def hook_name(self) -> str:
        return hooks.z(self.layer)

    def write(self, z: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
        """``z  # [copy * row, pos, head, d_head]``; ``replacement  # [row or 1, >= pos, head, d_head]``."""
        zz = einops.rearrange(z, "(copy row) pos head d -> copy row pos head d", copy=self.mask.shape[0])
        m = self.mask.to(z.device)[:, None, None, :, None]  # [copy, 1, 1, head, 1]
        r = (
            replacement[:, : z.shape[1]].to(z.device, z.dtype).unsqueeze(0)
        )  # [1, row or 1, pos, head, d_head]
        return einops.rearrange(torch.where(m, r, zz), "copy row pos head d -> (copy row) pos head d")

    def hook(self, replacement: torch.Tensor) -> tuple[str, Callable]:
        return self.hook_name, lambda z, hook: self.write(z, replacement)


def head_sites(heads: Sequence[Head]) -> list[HeadSite]:
    """One `HeadSite` per layer of ``heads`` (layers in order of first appearance)."""
    return [HeadSite(layer, tuple(hs)) for layer, hs in heads_by_layer(heads).items()]


@dataclass(frozen=True)
class ZLayout:
    """The rows of one forward as an intervention sees them: ``hook_z  # [n_rows, width, n_heads, d_head]``.

    ``position_ids  # [n_rows, width]``: each token's position in its sequence (packed rows), or None
    when row positions are ``0..width-1``. ``blocks``: ``(row, start, length, item)``, the positions
    of each item's tokens (what item-specific interventions read).
    """

    n_rows: int
    width: int
    n_heads: int
    d_head: int
    position_ids: torch.Tensor | None = None
    blocks: tuple[Block, ...] = ()


# --------------------------------------------------------------------------------------------------
# what


class Intervention:
    """What the intervened heads' outputs become.

    ``item_specific``: the replacement depends on the item (so items may not share computed tokens).
    Ablations (`METHODS`) are built for a plan with ``fit(model, plan, layers, reference=..., seed=...)``.
    """

    name: ClassVar[str] = ""
    item_specific: ClassVar[bool] = False

    @classmethod
    def fit(cls, model, plan: Plan, layers: Sequence[int], *, reference=None, seed: int = 0) -> Intervention:
        raise NotImplementedError

    def replacement(self, layer: int, layout: ZLayout) -> torch.Tensor:
        """``[n_rows or 1, width, n_heads, d_head]`` (float32, CPU): what every head's output at ``layer``
        becomes; the engine writes only the selected heads."""
        raise NotImplementedError


class ZeroAblation(Intervention):
    """Set the heads' outputs to 0 at every position.

    Examples
    --------
    >>> ZeroAblation().replacement(0, ZLayout(n_rows=2, width=3, n_heads=4, d_head=8)).abs().sum().item()
    0.0
    """

    name = "zero"

    @classmethod
    def fit(cls, model, plan: Plan, layers: Sequence[int], *, reference=None, seed: int = 0) -> ZeroAblation:
        return cls()

    def replacement(self, layer: int, layout: ZLayout) -> torch.Tensor:
        return torch.zeros((1, layout.width, layout.n_heads, layout.d_head))


class MeanAblation(Intervention):
    """Replace the heads' outputs by their mean over a reference dataset.

    ``token_mean[layer]  # [head, d_head]`` is the mean over real tokens (the sink excluded in causal
    models), ``sink_mean[layer]`` the mean at the sink position 0 (causal models: the sink sees only
    itself, so this leaves it unchanged; encoders: the token mean).

    Examples
    --------
    >>> import torch
    >>> abl = MeanAblation({0: torch.ones(2, 3)}, {0: torch.zeros(2, 3)})
    >>> abl.replacement(0, ZLayout(n_rows=1, width=3, n_heads=2, d_head=3))[0, :, 0, 0].tolist()
    [0.0, 1.0, 1.0]
    """

    name = "mean"

    def __init__(self, token_mean: dict[int, torch.Tensor], sink_mean: dict[int, torch.Tensor]):
        self.token_mean = token_mean
        self.sink_mean = sink_mean

    @classmethod
    def fit(cls, model, plan: Plan, layers: Sequence[int], *, reference=None, seed: int = 0) -> MeanAblation:
        """Means over ``reference`` (default: the plan's own sequences)."""
        return cls.from_sequences(model, reference_sequences(model, plan, reference)[0], layers)

    @classmethod
    def from_sequences(cls, model, seqs: list[tuple[int, ...]], layers: Sequence[int], chunk: int = 256):
        """Means over ``seqs``, accumulated in float64 ``chunk`` sequences at a time (bounded memory).

        Raises `ProbekitError` when ``seqs`` or ``layers`` is empty, or when the sequences hold no token
        besides the sink (there is nothing to average)."""
        layers = sorted(set(layers))
        skip_sink = 1 if model.is_causal else 0
        if not seqs or not layers:
            raise ProbekitError(
                f"mean ablation needs reference sequences and layers, got {len(seqs)} sequences and "
                f"{len(layers)} layers",
                where="MeanAblation.from_sequences",
                fix="pass a non-empty reference dataset and at least one head",
            )
        if all(len(s) <= skip_sink for s in seqs):
            raise ProbekitError(
                "the reference sequences hold no token besides the sink",
                where="MeanAblation.from_sequences",
                fix="use a reference dataset with words",
            )
        tok = sink = None
        n_tok = 0
        for s in range(0, len(seqs), chunk):
            z = collect_z(model, seqs[s : s + chunk], layers)
            t = sum(x[:, skip_sink:].double().sum(1) for x in z)
            k = sum(x[:, 0].double() for x in z)
            tok = t if tok is None else tok + t  # type: ignore[assignment]  # sum of tensors: a Tensor
            sink = k if sink is None else sink + k  # type: ignore[assignment]  # sum of tensors: a Tensor
            n_tok += sum(max(0, x.shape[1] - skip_sink) for x in z)
        mean_tok = (tok / max(n_tok, 1)).float()  # type: ignore[operator, union-attr]  # [layer, head, d_head]
        mean_sink = (sink / len(seqs)).float() if skip_sink else mean_tok  # type: ignore[operator, union-attr]  # a Tensor once seqs is non-empty
        return cls(
            {layer: mean_tok[k] for k, layer in enumerate(layers)},
            {layer: mean_sink[k] for k, layer in enumerate(layers)},
        )

    def replacement(self, layer: int, layout: ZLayout) -> torch.Tensor:
        tok, sink = self.token_mean[layer], self.sink_mean[layer]
        pos = layout.position_ids
        if pos is None:
            out = tok.unsqueeze(0).unsqueeze(0).repeat(1, layout.width, 1, 1)
            out[:, 0] = sink
        else:
            out = tok.expand(pos.shape[0], layout.width, -1, -1).clone()
            out[pos[:, : layout.width] == 0] = sink
        return out


class DonorActivations:
    """``hook_z`` of donor sequences, computed on demand for the donors one forward needs.

    ``compute(donors)`` returns one ``[len(layers), pos, head, d_head]`` tensor per donor; the last
    request is kept, so the layers of one forward share it (bounded memory).
    """

    def __init__(self, compute: Callable[[list[int]], list[torch.Tensor]], layers: Sequence[int]):
        self.compute = compute
        self.layers = sorted(set(layers))
        self._last: tuple[tuple[int, ...], dict[int, torch.Tensor]] = ((), {})

    @classmethod
    def from_model(cls, model, seqs: list[tuple[int, ...]], layers: Sequence[int]) -> DonorActivations:
        layers = sorted(set(layers))
        return cls(lambda donors: collect_z(model, [seqs[j] for j in donors], layers), layers)

    def z(self, donors: Sequence[int], layer: int) -> dict[int, torch.Tensor]:
        """``{donor: [pos, head, d_head]}`` at ``layer``."""
        key = tuple(sorted(set(donors)))
        if key != self._last[0]:
            self._last = (key, dict(zip(key, self.compute(list(key)), strict=True)))
        k = self.layers.index(layer)
        return {j: z[k] for j, z in self._last[1].items()}


def _from_donors(
    layout: ZLayout,
    layer: int,
    donor_of_item: Sequence[int],
    donors: DonorActivations,
    fill: MeanAblation | None,
) -> torch.Tensor:
    """``[n_rows, width, head, d_head]``: each item's block gets its donor's activations, position by
    position; positions beyond the donor's end get ``fill``'s token mean."""
    z = donors.z([donor_of_item[item] for *_, item in layout.blocks], layer)
    out = torch.zeros((layout.n_rows, layout.width, layout.n_heads, layout.d_head))
    pos = layout.position_ids
    for row, base, n, item in layout.blocks:
        donor = z[donor_of_item[item]]  # [pos, head, d_head]
        p = torch.arange(n) if pos is None else pos[row, base : base + n]
        ok = p < donor.shape[0]
        seg = out[row, base : base + n]
        seg[ok] = donor[p[ok]]
        if (~ok).any() and fill is not None:
            seg[~ok] = fill.token_mean[layer]
    return out


class ResampleAblation(Intervention):
    """Replace each item's head outputs by those of a donor item (Chan et al. 2022), position by position.

    ``donor_of_item[i]`` indexes ``donors``; positions the donor lacks get ``fill``'s mean.

    Examples
    --------
    >>> import torch
    >>> stored = {0: torch.zeros(1, 3, 2, 1), 1: torch.ones(1, 3, 2, 1)}  # [layer, pos, head, d_head]
    >>> abl = ResampleAblation([1, 0], DonorActivations(lambda ds: [stored[d] for d in ds], layers=[5]))
    >>> layout = ZLayout(n_rows=2, width=3, n_heads=2, d_head=1, blocks=((0, 0, 3, 0), (1, 0, 3, 1)))
    >>> abl.replacement(5, layout)[:, :, 0, 0].tolist()
    [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """

    name = "resample"
    item_specific = True

    def __init__(
        self, donor_of_item: Sequence[int], donors: DonorActivations, fill: MeanAblation | None = None
    ):
        self.donor_of_item = list(donor_of_item)
        self.donors = donors
        self.fill = fill

    @classmethod
    def fit(
        cls, model, plan: Plan, layers: Sequence[int], *, reference=None, seed: int = 0
    ) -> ResampleAblation:
        """One donor per item, drawn (``seed``) among the other reference items at least as long as it
        (default reference: the plan's own items); if none is, the longest, mean-filled."""
        ref_seqs, ref_items = reference_sequences(model, plan, reference)
        fill = MeanAblation.from_sequences(model, ref_seqs, layers)
        firsts = [rows[0] for rows in ref_items]
        donor_of_item = draw_donors(plan, [len(ref_seqs[r]) for r in firsts], reference is None, seed)
        return cls(
            donor_of_item, DonorActivations.from_model(model, [ref_seqs[r] for r in firsts], layers), fill
        )

    def replacement(self, layer: int, layout: ZLayout) -> torch.Tensor:
        return _from_donors(layout, layer, self.donor_of_item, self.donors, self.fill)


def draw_donors(plan: Plan, donor_lengths: Sequence[int], same_items: bool, seed: int) -> list[int]:
    """For each plan item, a donor index (``same_items``: the donors are the plan's items, so not itself)."""
    lengths = np.array(donor_lengths)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(plan.n_items):
        need = plan.item_length(i)
        others = np.array([j for j in range(len(lengths)) if not (same_items and j == i)])
        if others.size == 0:
            raise ProbekitError(
                "resample ablation needs at least two items", fix="use more items or another method"
            )
        ok = others[lengths[others] >= need]
        if ok.size:
            j = int(rng.choice(ok))
        else:  # nothing long enough: the longest other item, mean-filled beyond its end
            j = int(others[np.argmax(lengths[others])])
            rng.random()
        out.append(j)
    return out


class Patch(Intervention):
    """Activation patching: item ``i`` (a corrupted prompt) takes the heads' outputs of ``clean`` donor ``i``
    (its clean prompt, same length).

    Examples
    --------
    >>> import torch
    >>> clean = {0: torch.full((1, 2, 1, 1), 7.0)}  # donor -> [layer, pos, head, d_head]
    >>> patch = Patch(DonorActivations(lambda ds: [clean[d] for d in ds], layers=[0]))
    >>> layout = ZLayout(n_rows=1, width=2, n_heads=1, d_head=1, blocks=((0, 0, 2, 0),))
    >>> patch.replacement(0, layout).flatten().tolist()
    [7.0, 7.0]
    """

    name = "patch"
    item_specific = True

    def __init__(self, clean: DonorActivations):
        self.clean = clean

    @classmethod
    def from_clean(cls, model, clean: list[tuple[int, ...]], layers: Sequence[int]) -> Patch:
        return cls(DonorActivations.from_model(model, clean, layers))

    def replacement(self, layer: int, layout: ZLayout) -> torch.Tensor:
        identity = range(max((item for *_, item in layout.blocks), default=-1) + 1)
        return _from_donors(layout, layer, identity, self.clean, None)


# --------------------------------------------------------------------------------------------------
# activations the interventions are built from


def collect_z(
    model, seqs: list[tuple[int, ...]], layers: Sequence[int], batch_size: int = 64
) -> list[torch.Tensor]:
    """``hook_z`` of every sequence at ``layers``: one ``[len(layers), pos, head, d_head]`` tensor per
    sequence (CPU)."""
    out: list[torch.Tensor | None] = [None] * len(seqs)
    layers = list(layers)
    names = {hooks.z(layer) for layer in layers}
    stop = max(layers) + 1
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, mask = padded([seqs[i] for i in idx], model.pad_token_id, not model.is_causal)
            _, cache = model.bridge.run_with_cache(
                ids.to(model.device),
                attention_mask=None if mask is None else mask.to(model.device),
                names_filter=names.__contains__,
                stop_at_layer=stop if stop < model.n_layers else None,
            )
            stacked = torch.stack([cache[hooks.z(layer)] for layer in layers], dim=1).cpu()
            for k, i in enumerate(idx):
                out[i] = stacked[k, :, : len(seqs[i])].clone()
    return out  # type: ignore[return-value]
