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
    that layer's other heads (the control of `specialists_vs_random`); `coupled_random_sets` with one
    head set.

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
    return coupled_random_sets(model, [heads], n_draws, seed=seed)[0]


def coupled_random_sets(model, head_sets: Sequence, n_draws: int, seed: int = 0) -> list[list[list[Head]]]:
    """Layer-matched random sets for several head sets at once, from the *same* random draws.

    Draw ``d`` shuffles the heads of every layer once (one `numpy.random.Generator.permutation` per
    layer any set uses, layers in increasing order); head set ``s`` then takes, in each of its layers,
    the first heads of that layer's shuffle that are not in ``s``, as many as ``s`` has there. For each
    set alone this is a uniform draw without replacement among its layer's other heads (the first m of
    a uniformly shuffled pool), so each set's control is `matched_random_sets`'s; across sets the draws
    are shared wherever the sets allow it (identical for two sets with the same heads, the same heads
    outside them for two sets in the same layers), so two selection criteria are compared with the
    same random heads rather than with two independent samples of them.

    Parameters
    ----------
    model : probekit.Model
    head_sets : head specifications (`parse_heads`), e.g. one per selection criterion.
    n_draws : random sets per head set.
    seed : seeds the shuffles (`numpy.random.default_rng`).

    Returns
    -------
    list of list of list of (layer, head)
        ``[set][draw]``: a head list, layers in increasing order, heads sorted within a layer.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> a, b = coupled_random_sets(model, [[(0, 1)], [(0, 2)]], n_draws=4, seed=0)
    >>> len(a), all(h != (0, 1) for d in a for h in d), all(h != (0, 2) for d in b for h in d)
    (4, True, True)
    """
    per_set = [heads_by_layer(parse_heads(model, s)) for s in head_sets]
    for per_layer in per_set:
        for layer, spec_heads in per_layer.items():
            pool = model.n_heads - len(set(spec_heads))
            if pool < len(spec_heads):
                raise ProbekitError(
                    f"layer {layer} has {pool} non-specialist heads, {len(spec_heads)} are needed",
                    fix="pass fewer specialists per layer",
                )
    layers = sorted({layer for per_layer in per_set for layer in per_layer})
    rng = np.random.default_rng(seed)
    out: list[list[list[Head]]] = [[] for _ in per_set]
    for _ in range(n_draws):
        shuffles = {layer: rng.permutation(model.n_heads) for layer in layers}
        for s, per_layer in enumerate(per_set):
            draw: list[Head] = []
            for layer, spec_heads in sorted(per_layer.items()):
                free = [int(h) for h in shuffles[layer] if int(h) not in spec_heads]
                draw += [(layer, h) for h in sorted(free[: len(spec_heads)])]
            out[s].append(draw)
    return out
