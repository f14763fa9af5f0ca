"""The probes' inputs: residual streams captured (or given), lined up with the task instances.

Residual-stream layer 0 is the embeddings (``blocks.0.hook_resid_pre``) and layer l > 0 the output of
block l-1 (``blocks.{l-1}.hook_resid_post``). A word-pair instance (``relation:R``) is probed on
``[h_a, h_b, h_a * h_b]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral
from typing import cast

import numpy as np
import pandas as pd

from probekit.analyses.probes.tasks import TaskInstances
from probekit.errors import ProbekitError

__all__ = ["align_instances", "capture_streams", "features", "load_if_name", "resolve_layers"]


def load_if_name(model):
    """``model`` itself, or the model of that name (`probekit.models.load_model`)."""
    if isinstance(model, str):
        from probekit.models import load_model

        return load_model(model)
    return model


def capture_streams(model, sentences: list, layers):
    """Run `probekit.activations.capture.capture` for residual-stream layers ``layers`` (0..n_layers).

    Stream layer 0 is ``blocks.0.hook_resid_pre``; stream layer l > 0 is ``blocks.{l-1}.hook_resid_post``,
    so the blocks to capture are ``{l - 1 : l > 0}`` (plus block 0's ``resid_pre`` when 0 is asked for).
    """
    from probekit.activations.capture import capture as run_capture

    wanted = list(range(model.n_layers + 1)) if isinstance(layers, str) else _as_layer_list(layers)
    bad = [x for x in wanted if not 0 <= x <= model.n_layers]
    if bad:
        raise ProbekitError(
            f"layers {bad} are outside the residual stream 0..{model.n_layers} of {model.name}",
            where="probe_layers",
            fix="0 is the embeddings, l the output of block l-1",
        )
    blocks = sorted({max(x - 1, 0) for x in wanted})
    resid = ("resid_pre", "resid_post") if 0 in wanted else ("resid_post",)
    return run_capture(model, sentences, layers=blocks, resid=resid, attention=False)


def resolve_layers(layers, capture) -> list[int]:
    """The stream layers to probe: every captured one for ``"all"``, else ``layers`` (all captured)."""
    available = [int(x) for x in capture.stream_layers]
    if isinstance(layers, str):
        if layers != "all":
            raise ProbekitError(f"layers must be 'all' or integers, got {layers!r}", where="probe_layers")
        return available
    wanted = _as_layer_list(layers)
    missing = [x for x in wanted if x not in available]
    if missing:
        raise ProbekitError(
            f"layers {missing} are not in the capture (it has {available})",
            where="probe_layers",
            fix="capture those layers, or ask only for captured ones",
        )
    return wanted


def align_instances(inst: TaskInstances, capture, where: str) -> tuple[TaskInstances, np.ndarray]:
    """The instances found in the capture and their capture rows (``rows  # [n, 1 | 2]``).

    Instances whose words were not captured are dropped with a warning; a word mismatch means capture
    and dataset do not belong together (an error)."""
    index = capture.index
    key = pd.MultiIndex.from_arrays(
        [index.get_level_values(0).astype(str), np.asarray(index.get_level_values(1), dtype=int)]
    )
    if not key.is_unique:
        raise ProbekitError(
            "the capture index has duplicate (sentence_id, word_id) rows",
            where=where,
            fix="capture each sentence once (sentence ids must be unique)",
        )
    rows = np.stack(
        [
            key.get_indexer(pd.MultiIndex.from_arrays([inst.sentence_ids.astype(str), inst.word_ids[:, j]]))
            for j in range(inst.word_ids.shape[1])
        ],
        axis=1,
    )
    # [n_instances]; axis=1 gives an array (numpy's stubs say a bool)
    found = cast(np.ndarray, (rows >= 0).all(axis=1))
    if not found.any():
        raise ProbekitError(
            "the capture contains none of the dataset's sentences",
            where=where,
            fix="pass the capture made from this dataset (capture=...), or capture=None",
        )
    if not found.all():
        warnings.warn(
            f"{where}: {int((~found).sum())} of {len(found)} instances are not in the capture "
            f"(e.g. sentences too long for the model) and are skipped",
            stacklevel=3,
        )
    inst, rows = inst.subset(found), rows[found]
    if index.nlevels >= 3:
        captured = np.asarray(index.get_level_values(2), dtype=object)[rows]
        mismatch = np.flatnonzero((captured != inst.words).any(axis=1))
        if mismatch.size:
            i = mismatch[0]
            raise ProbekitError(
                f"the capture's words do not match the dataset: sentence {inst.sentence_ids[i]!r} word "
                f"{inst.word_ids[i].tolist()} is {inst.words[i].tolist()} in the data but "
                f"{captured[i].tolist()} in the capture",
                where=where,
                fix="capture this dataset (or pass capture=None)",
            )
    return inst, rows


def features(stream: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Probe inputs ``[n, d]`` (``[n, 3d]`` for pairs): the word's vector ``stream[rows[:, 0]]``, or
    ``[h_a, h_b, h_a * h_b]`` for a word pair; ``stream  # [n_words, d]``, ``rows  # [n, 1 | 2]``."""
    if rows.shape[1] == 1:
        return stream[rows[:, 0]]
    a, b = stream[rows[:, 0]], stream[rows[:, 1]]
    return np.concatenate([a, b, a * b], axis=1)


def _as_layer_list(layers) -> list[int]:
    if isinstance(layers, Integral):
        return [int(layers)]
    if _is_sequence(layers) and all(isinstance(x, Integral) for x in layers):
        return [int(x) for x in layers]
    raise ProbekitError(
        f"layers must be 'all', an int or a list of ints, got {layers!r}", where="probe_layers"
    )


def _is_sequence(x) -> bool:
    return isinstance(x, Sequence | np.ndarray) and not isinstance(x, str)
