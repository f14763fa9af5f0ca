"""Attention heads as ``(layer, head)`` pairs: parsing what users write, labels, layer-matched random sets.

A head is a *query* head: under grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads)
each query head has its own slice of ``hook_z`` and is intervened on alone. See
``docs/methods/interventions.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from probekit.errors import ProbekitError

Head = tuple[int, int]


def parse_heads(model, heads) -> list[Head]:
    """Validate a head specification against ``model``.

    Parameters
    ----------
    model : probekit.Model
    heads : ``"all"`` (or None), ``"L.H,L.H"``, ``[(layer, head), ...]``, ``["L.H", ...]`` or one
        ``(layer, head)`` pair; 0-based query heads.

    Returns
    -------
    list of (layer, head)
        In the order given, duplicates dropped.

    Raises
    ------
    ProbekitError
        For a malformed spec, an empty one, or a layer/head out of range for ``model``.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> parse_heads(model, "1.3,0.0")
    [(1, 3), (0, 0)]
    >>> len(parse_heads(model, "all")) == model.n_layers * model.n_heads
    True
    """
    if heads is None or (isinstance(heads, str) and heads.strip().lower() == "all"):
        return [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    if isinstance(heads, str):
        heads = [x for x in heads.replace(" ", "").split(",") if x]
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int | np.integer) for x in heads):
        heads = [heads]
    out: list[Head] = []
    for item in heads:
        layer, h = _one_head(item)
        if not 0 <= layer < model.n_layers or not 0 <= h < model.n_heads:
            raise ProbekitError(
                f"head {layer}.{h} is out of range: {model.name} has layers 0..{model.n_layers - 1} and "
                f"heads 0..{model.n_heads - 1} per layer",
                where="heads",
                fix="use 0-based indices (query heads; under GQA every query head counts)",
            )
        out.append((layer, h))
    if not out:
        raise ProbekitError("no heads were given", where="heads", fix="pass 'all' or some heads")
    return list(dict.fromkeys(out))


def _one_head(item) -> Head:
    """``"L.H"`` or ``(L, H)`` -> ``(L, H)`` (range not checked)."""
    if isinstance(item, str):
        m = re.fullmatch(r"(-?\d+)\.(-?\d+)", item.strip())
        if not m:
            raise ProbekitError(
                f"head {item!r} is not LAYER.HEAD",
                where="heads",
                fix="write heads as e.g. 3.1,12.4 (0-based layer and head) or 'all'",
            )
        item = (int(m.group(1)), int(m.group(2)))
    if (
        not isinstance(item, tuple | list)
        or len(item) != 2
        or not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in item)
    ):
        raise ProbekitError(
            f"head {item!r} is not a (layer, head) pair of integers",
            where="heads",
            fix="pass e.g. [(3, 1), (12, 4)] or 'all'",
        )
    return int(item[0]), int(item[1])


def head_label(heads: Iterable[Head]) -> str:
    """``"L.H+L.H"``: the label of a head set in result tables.

    Examples
    --------
    >>> head_label([(3, 1), (12, 4)])
    '3.1+12.4'
    """
    return "+".join(f"{layer}.{h}" for layer, h in heads)


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """``{layer: [head, ...]}`` in order of first appearance.

    Examples
    --------
    >>> heads_by_layer([(1, 2), (0, 3), (1, 0)])
    {1: [2, 0], 0: [3]}
    """
    out: dict[int, list[int]] = {}
    for layer, h in heads:
        out.setdefault(layer, []).append(h)
    return out


def matched_random_sets(model, heads: Sequence[Head], n_draws: int, seed: int = 0) -> list[list[Head]]:
    """Random head sets matched by layer to ``heads``, never containing one of them.

    Each draw has as many heads in each layer as ``heads`` has there, drawn without replacement among
    that layer's other heads (the control of `specialists_vs_random`).

    Parameters
    ----------
    model : probekit.Model
    heads : the specialists (any form `parse_heads` accepts).
    n_draws : number of random sets.
    seed : seeds the draws (`numpy.random.default_rng`).

    Returns
    -------
    list of list of (layer, head)
        ``n_draws`` sets, layers in increasing order, heads sorted within a layer.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> draws = matched_random_sets(model, [(0, 1), (1, 2)], n_draws=3, seed=1)
    >>> [[layer for layer, _ in d] for d in draws]
    [[0, 1], [0, 1], [0, 1]]
    """
    hs = parse_heads(model, heads)
    per_layer = heads_by_layer(hs)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        draw = []
        for layer, spec_heads in sorted(per_layer.items()):
            pool = [h for h in range(model.n_heads) if h not in spec_heads]
            if len(pool) < len(spec_heads):
                raise ProbekitError(
                    f"layer {layer} has {len(pool)} non-specialist heads, {len(spec_heads)} are needed",
                    fix="pass fewer specialists per layer",
                )
            draw += [(layer, int(h)) for h in sorted(rng.choice(pool, size=len(spec_heads), replace=False))]
        draws.append(draw)
    return draws
