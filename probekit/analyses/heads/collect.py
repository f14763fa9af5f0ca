"""Relation instances and the one pass over the word attention that every head score reads.

`instances` lists the visible (source, gold partner) pairs of a dataset with their dev/test side;
`collect` reads each sentence's word attention once and keeps, for every instance and head, the
argmax word and the attention on the gold partner, plus Voita et al.'s (2019) argmax-offset counts.
The conventions (visibility, self exclusion, ties) are in ``docs/methods/heads.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from probekit.activations import hooks
from probekit.data import Dataset
from probekit.data.relations import POSITIONAL_RELATIONS, relation_instances
from probekit.errors import ProbekitError

#: The direction of the positional relations (``prev_word``, ``next_word``, ``self``, ``first_word``).
POSITIONAL_DIRECTION = "positional"


def check_arguments(dataset, n_boot, n_perm, test_size) -> None:
    """Raise `ProbekitError` for a non-Dataset, a non-positive ``n_boot``/``n_perm`` or a ``test_size``
    outside (0, 1)."""
    if not isinstance(dataset, Dataset):
        raise ProbekitError(
            f"expected a probekit Dataset, got {type(dataset).__name__}",
            fix="load one with probekit.load_dataset(spec)",
        )
    for name, v in (("n_boot", n_boot), ("n_perm", n_perm)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ProbekitError(f"{name} must be a positive integer, got {v!r}", where="score_heads")
    if not 0 < test_size < 1:
        raise ProbekitError(f"test_size must lie in (0, 1), got {test_size!r}", where="score_heads")


def families(names, directions) -> list[tuple[str, str]]:
    """``(relation, direction)`` pairs in report order; positional relations get `POSITIONAL_DIRECTION`."""
    return [
        (n, POSITIONAL_DIRECTION) if n in POSITIONAL_RELATIONS else (n, d)
        for n in names
        for d in ((POSITIONAL_DIRECTION,) if n in POSITIONAL_RELATIONS else directions)
    ]


def instances(dataset, names, directions, causal, test_size, seed) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Visible instances (sorted by sentence) with ``is_test``/``self_ok``, and the counts table."""
    inst = relation_instances(dataset, names, directions)
    _, test = dataset.split(test_size=test_size, seed=seed)
    test_ids = {s.id for s in test.sentences}
    sent_is_test = np.array([s.id in test_ids for s in dataset.sentences], dtype=bool)
    inst["self_ok"] = inst.relation == "self"
    visible = (inst.src != inst.tgt) | inst.self_ok
    if causal:
        visible &= inst.tgt <= inst.src
    inst["visible"] = visible
    inst["is_test"] = sent_is_test[inst.sentence_idx.to_numpy()] if len(inst) else np.zeros(0, bool)
    counts = []
    for rel, direction in families(names, directions):
        sub = inst[(inst.relation == rel) & (inst.direction == direction)]
        vis = sub[sub.visible]
        counts.append(
            {
                "relation": rel,
                "direction": direction,
                "n_all": len(sub),
                "n_visible": len(vis),
                "n_dev": int((~vis.is_test).sum()),
                "n_test": int(vis.is_test.sum()),
                "sentences_test": int(vis[vis.is_test].sentence_idx.nunique()),
            }
        )
    inst = inst[inst.visible].sort_values("sentence_idx", kind="stable").reset_index(drop=True)
    return inst, pd.DataFrame(counts)


def capture_attention(model, dataset, batch_size, progress):
    """Word attention of ``dataset`` (`probekit.activations.capture`, disk-cached); the model must
    expose attention-pattern hooks."""
    from probekit.activations.capture import capture

    elsewhere = getattr(model, "capture_attention", None)
    if elsewhere is not None:  # captured by workers (probekit.parallel.heads.ShardedModel)
        return elsewhere(dataset, batch_size, progress)
    bridge = getattr(model, "bridge", None)
    hook_names = getattr(bridge, "hook_dict", None) or {}
    if not any(hooks.is_pattern(name) for name in hook_names):
        raise ProbekitError(
            f"model {getattr(model, 'name', model)!r} exposes no attention-pattern hooks "
            f"(blocks.L.{hooks.PATTERN_SUFFIX})",
            where="score_heads",
            fix="load it with probekit.load_model, which uses eager attention",
        )
    return capture(model, dataset, resid=(), attention=True, batch_size=batch_size, progress=progress)


def check_capture(cap, dataset) -> None:
    """Raise `ProbekitError` unless ``cap`` holds attention for exactly ``dataset``'s sentences."""
    if not list(getattr(cap, "attn_layers", []) or []):
        raise ProbekitError(
            "the capture holds no attention",
            where="score_heads(capture=...)",
            fix="capture(..., attention=True)",
        )
    ids = [s.id for s in cap.sentences]
    if ids != [s.id for s in dataset.sentences]:
        raise ProbekitError(
            "the capture was made from other sentences than the dataset",
            where="score_heads(capture=...)",
            fix="capture this dataset, or pass capture=None",
        )


@dataclass
class Scored:
    """What `collect` read from the attention; heads are flattened layer-major (``L*H``)."""

    layers: list[int]
    n_heads: int
    causal: bool
    pred: np.ndarray  # [n_inst, L*H] argmax word per instance (self excluded unless self_ok)
    mass: np.ndarray  # [n_inst, L*H] attention on the gold partner
    offset_hist: np.ndarray  # [L*H, 2*max_n - 1] Voita: argmax offset (self included) counts
    max_n: int
    n_rows: int  # words counted in offset_hist
    offset_valid: np.ndarray  # [2*max_n - 1] counted words for which each offset is inside the sentence
    special: np.ndarray  # [L*H] summed special mass over those words
    n_words: np.ndarray  # [n_sentences]


def collect(cap, inst: pd.DataFrame, causal: bool, progress: bool, desc: str) -> Scored:
    """One pass over the sentences: masked argmax rows once per sentence for all heads, then gather.
    A capture reduced by workers (`probekit.parallel.heads.ShardedAttention`) collects itself."""
    if hasattr(cap, "collect"):
        return cap.collect(inst, causal, progress, desc)
    n_words = np.asarray(cap.n_words, dtype=np.int64)
    n_sent = len(n_words)
    n_heads = int(cap.n_heads)
    lh = len(cap.attn_layers) * n_heads
    max_n = int(n_words.max())
    width = 2 * max_n - 1
    m = len(inst)
    pred = np.empty((m, lh), dtype=np.int16 if max_n < 32_000 else np.int32)
    mass = np.empty((m, lh), dtype=np.float32)
    hist = np.zeros(lh * width, dtype=np.int64)
    valid = np.zeros(width, dtype=np.int64)
    special = np.zeros(lh)
    n_rows = 0
    sidx = inst.sentence_idx.to_numpy(dtype=np.int64)
    src, tgt = inst.src.to_numpy(dtype=np.int64), inst.tgt.to_numpy(dtype=np.int64)
    self_ok = inst.self_ok.to_numpy(dtype=bool)
    bounds = np.searchsorted(sidx, np.arange(n_sent + 1))
    head_base = (np.arange(lh) * width)[:, None]
    has_special = hasattr(cap, "special_mass")
    for i in tqdm(range(n_sent), desc=desc, unit="sent", disable=not progress, leave=False):
        n = int(n_words[i])
        att = np.asarray(cap.attention(i), dtype=np.float32).reshape(lh, n, n)  # [L*H, from, to]
        masked = np.where(np.tri(n, dtype=bool), att, np.float32(-1.0)) if causal else att.copy()
        pred_in = masked.argmax(-1)  # [LH, n], self allowed
        diag = np.arange(n)
        masked[:, diag, diag] = -1.0
        pred_ex = masked.argmax(-1)  # [LH, n], self excluded
        rows = diag[1:] if causal else (diag if n > 1 else diag[:0])
        if len(rows):
            off = pred_in[:, rows] - rows + (max_n - 1)
            hist += np.bincount((off + head_base).ravel(), minlength=lh * width)
            n_rows += len(rows)
            offs = diag[None, :] - rows[:, None]  # every visible target - source
            valid += np.bincount((offs[offs <= 0] if causal else offs.ravel()) + (max_n - 1), minlength=width)
            if has_special:
                special += np.asarray(cap.special_mass(i), dtype=np.float64).reshape(lh, n)[:, rows].sum(-1)
        a, b = bounds[i], bounds[i + 1]
        if b > a:
            s, t = src[a:b], tgt[a:b]
            pred[a:b] = np.where(self_ok[a:b][None, :], pred_in[:, s], pred_ex[:, s]).T
            mass[a:b] = att[:, s, t].T
    return Scored(
        layers=list(cap.attn_layers),
        n_heads=n_heads,
        causal=causal,
        pred=pred,
        mass=mass,
        offset_hist=hist.reshape(lh, width),
        max_n=max_n,
        n_rows=n_rows,
        offset_valid=valid,
        special=special,
        n_words=n_words,
    )
