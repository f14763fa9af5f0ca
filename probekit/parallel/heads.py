"""Head scoring over shards: workers capture and reduce, the driver combines and runs the local tables.

`sharded_model` wraps a model so that `probekit.analyses.heads.analyze_heads` captures through Ray: its
``capture_attention`` returns a `ShardedAttention`, whose ``collect`` sends every shard to a worker.
The worker captures the shard's word attention and reduces it, sentence by sentence, with the local
`probekit.analyses.heads.collect.collect` (one call per sentence) to the statistics the head tables
need: per instance the argmax word and the attention on the gold partner for every head, per sentence
the special-token mass, and the integer counts of Voita's offset histogram. The driver puts the
instances back in corpus order, adds the counts (integers: exact in any order) and adds the per-sentence
special mass in corpus order, as `collect` does, then `analyze_heads` carries on with the same
`head_table` (bootstrap CIs over sentences, sign-flip tests, permutation null) as a local run. Because
the shards are whole capture batches (`plan_shards`), every number is the same bits as the local run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from probekit.analyses.heads.collect import Scored, capture_attention, collect
from probekit.parallel.shards import (
    DEFAULT_SHARD_SIZE,
    RayOptions,
    Shard,
    ShardJob,
    ShardStore,
    plan_shards,
    run_on_ray,
    shard_key,
)

INST_COLUMNS = ("sentence_idx", "src", "tgt", "self_ok")


@dataclass(eq=False)
class ShardedModel:
    """A model whose word attention is captured by Ray workers (`sharded_model` makes one).

    ``name``, ``is_causal``, ``n_layers``, ``n_heads`` and ``fingerprint`` describe the weights the
    workers load (``load_model(name, device)``); ``tokenizer`` is a loaded model with the same
    tokenizer, used on the driver to plan the shards; ``local`` (optional) is the loaded model itself,
    to which every other attribute is forwarded (e.g. the TransformerLens head detector's ``bridge``).
    """

    name: str
    device: str | None
    fingerprint: str
    is_causal: bool
    n_layers: int
    n_heads: int
    tokenizer: Any
    options: RayOptions = field(default_factory=RayOptions)
    shard_size: int = DEFAULT_SHARD_SIZE
    store: ShardStore | None = None
    local: Any = None
    seed: int = 0

    def __getattr__(self, attr):
        local = self.__dict__.get("local")
        if local is None or attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(local, attr)

    def random_twin(self, device: str | None = "cpu", seed: int | None = None) -> ShardedModel:
        """The random-init model ``random:<name>`` (same architecture and tokenizer), sharded the same
        way and loaded by the workers with ``load_model(name, device, seed=seed)`` (`analyze_heads`
        loads it on the CPU, the probes and an experiment on the default device; ``seed`` defaults to
        this model's)."""
        seed = self.seed if seed is None else seed
        twin = self.name.startswith("random:")
        return ShardedModel(
            name=self.name if twin else f"random:{self.name}",
            device=device,
            fingerprint=self.fingerprint if twin else f"random:{self.fingerprint}:seed={seed}",
            is_causal=self.is_causal,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            tokenizer=self.tokenizer,
            options=self.options,
            shard_size=self.shard_size,
            store=self.store,
            seed=seed,
        )

    def capture_attention(self, dataset, batch_size: int, progress: bool) -> ShardedAttention:
        return ShardedAttention(self, list(dataset.sentences), batch_size)


def sharded_model(
    model, options: RayOptions | None = None, shard_size: int = DEFAULT_SHARD_SIZE, store=True, seed: int = 0
) -> ShardedModel:
    """Wrap a loaded `probekit.Model` so that `analyze_heads` runs its capture and reduction on Ray.

    Parameters
    ----------
    model : the loaded model (the driver uses it to plan shards and for the head detector).
    options : `RayOptions` (workers, CPUs per worker, address, retries).
    shard_size : sentences per shard (rounded up to a multiple of the capture batch size).
    store : True for `ShardStore.default` (``$PROBEKIT_CACHE/shards``), a `ShardStore`, or None/False
        to keep no finished shards.
    seed : the ``seed`` the workers pass to ``load_model`` (it only changes random-init weights).

    Returns
    -------
    ShardedModel
        Pass it as ``model`` to `analyze_heads`, and its `ShardedModel.random_twin` as ``random_model``.
    """
    if store is True:
        store = ShardStore.default()
    return ShardedModel(
        name=model.name,
        device=None,
        fingerprint=model.fingerprint,
        is_causal=bool(model.is_causal),
        n_layers=int(model.n_layers),
        n_heads=int(model.n_heads),
        tokenizer=model,
        options=options or RayOptions(),
        shard_size=shard_size,
        store=store or None,
        local=model,
        seed=seed,
    )


@dataclass(eq=False)
class ShardedAttention:
    """What `ShardedModel.capture_attention` returns: the sentences, the layers and heads, and a
    ``collect`` that has the shards captured and reduced by workers (`probekit.analyses.heads.collect`
    calls it instead of reading attention itself)."""

    model: ShardedModel
    sentences: list
    batch_size: int

    @property
    def attn_layers(self) -> list[int]:
        return list(range(self.model.n_layers))

    @property
    def n_heads(self) -> int:
        return self.model.n_heads

    def shards(self) -> list[Shard]:
        from probekit.activations.align import align_many

        n_tokens = [e.n_tokens for e in align_many(self.model.tokenizer, self.sentences)]
        return plan_shards(n_tokens, self.batch_size, self.model.shard_size)

    def collect(self, inst: pd.DataFrame, causal: bool, progress: bool, desc: str) -> Scored:
        shards = self.shards()
        sidx = inst.sentence_idx.to_numpy(dtype=np.int64)
        jobs, rows_of = [], {}
        for shard in shards:
            idx = np.asarray(shard.indices, dtype=np.int64)
            rows = np.flatnonzero(np.isin(sidx, idx))  # ascending: inst is sorted by sentence
            rows_of[shard.id] = rows
            sub = {c: inst[c].to_numpy()[rows] for c in INST_COLUMNS}
            sub["sentence_idx"] = np.searchsorted(idx, sub["sentence_idx"]).astype(np.int64)
            spec: dict[str, Any] = {
                "shard": shard.id,
                "model": self.model.name,
                "device": self.model.device,
                "seed": self.model.seed,
                "sentences": [self.sentences[i] for i in shard.indices],
                "inst": sub,
                "causal": bool(causal),
                "batch_size": int(self.batch_size),
            }
            payload = {
                "model": self.model.name,
                "device": self.model.device,
                "fingerprint": self.model.fingerprint,
                "sentences": [[s.id, list(s.words), list(s.space_after or [])] for s in spec["sentences"]],
                "inst": sub,
                "causal": bool(causal),
                "batch_size": int(self.batch_size),
            }
            jobs.append(ShardJob(shard, shard_key("heads", payload), reduce_shard, spec))
        results = run_on_ray(jobs, self.model.options, self.model.store)
        return combine(shards, rows_of, results, len(inst), self.attn_layers, self.n_heads, causal)


def combine(shards, rows_of, results, n_inst, layers, n_heads, causal) -> Scored:
    """The `Scored` of the whole corpus from the shards' statistics (corpus order; see module doc)."""
    n_sent = sum(len(s.indices) for s in shards)
    lh = len(layers) * n_heads
    n_words = np.zeros(n_sent, dtype=np.int64)
    for s in shards:
        n_words[list(s.indices)] = results[s.id]["n_words"]
    max_n = int(n_words.max())
    width = 2 * max_n - 1
    pred = np.empty((n_inst, lh), dtype=np.int16 if max_n < 32_000 else np.int32)
    mass = np.empty((n_inst, lh), dtype=np.float32)
    hist = np.zeros((lh, width), dtype=np.int64)
    valid = np.zeros(width, dtype=np.int64)
    special_rows = np.zeros((n_sent, lh))  # [sentence, L*H]
    n_rows = 0
    for s in shards:
        r = results[s.id]
        rows = rows_of[s.id]
        pred[rows] = r["pred"]
        mass[rows] = r["mass"]
        hist += recenter(r["hist"], int(r["max_n"]), max_n)
        valid += recenter(r["valid"][None, :], int(r["max_n"]), max_n)[0]
        special_rows[list(s.indices)] = r["special"]
        n_rows += int(r["n_rows"])
    special = np.zeros(lh)
    for row in special_rows:  # in corpus order, one sentence at a time, as collect adds them
        special += row
    return Scored(
        layers=list(layers),
        n_heads=n_heads,
        causal=causal,
        pred=pred,
        mass=mass,
        offset_hist=hist,
        max_n=max_n,
        n_rows=n_rows,
        offset_valid=valid,
        special=special,
        n_words=n_words,
    )


def recenter(hist: np.ndarray, max_n: int, new_max_n: int) -> np.ndarray:
    """An offset histogram ``[..., 2*max_n - 1]`` (offset 0 at ``max_n - 1``) widened to ``new_max_n``.

    Examples
    --------
    >>> recenter(np.array([[1, 2, 3]]), 2, 3).tolist()
    [[0, 1, 2, 3, 0]]
    """
    pad = new_max_n - max_n
    return np.pad(hist, [(0, 0)] * (hist.ndim - 1) + [(pad, pad)])


@dataclass
class _OneSentence:
    """Sentence ``i`` of a capture, seen as a one-sentence capture (what `collect` reads)."""

    cap: Any
    i: int

    def __post_init__(self):
        self.n_words = np.asarray(self.cap.n_words)[self.i : self.i + 1]
        self.n_heads = self.cap.n_heads
        self.attn_layers = self.cap.attn_layers

    def attention(self, _):
        return self.cap.attention(self.i)

    def special_mass(self, _):
        return self.cap.special_mass(self.i)


def reduce_shard(model, spec: dict) -> dict[str, np.ndarray | np.int64]:
    """Worker side: capture one shard's attention and reduce it to the statistics `combine` adds up.

    Each sentence goes through the local `collect` on its own, so the per-instance argmax words and
    masses, the per-sentence special mass and the offset counts are the numbers the local run computes.
    """
    cap = capture_attention(model, spec["sentences"], spec["batch_size"], False)
    inst = pd.DataFrame({c: spec["inst"][c] for c in INST_COLUMNS})
    sidx = inst.sentence_idx.to_numpy()
    n_sent = len(spec["sentences"])
    bounds = np.searchsorted(sidx, np.arange(n_sent + 1))
    lh = len(cap.attn_layers) * int(cap.n_heads)
    n_words = np.asarray(cap.n_words, dtype=np.int64)
    max_n = int(n_words.max())
    hist = np.zeros((lh, 2 * max_n - 1), dtype=np.int64)
    valid = np.zeros(2 * max_n - 1, dtype=np.int64)
    special = np.zeros((n_sent, lh))
    preds, masses, n_rows = [], [], 0
    for i in range(n_sent):
        one = inst.iloc[bounds[i] : bounds[i + 1]].assign(sentence_idx=0)
        sc = collect(_OneSentence(cap, i), one, spec["causal"], False, "")
        preds.append(sc.pred.astype(np.int32))
        masses.append(sc.mass)
        hist += recenter(sc.offset_hist, sc.max_n, max_n)
        valid += recenter(sc.offset_valid[None, :], sc.max_n, max_n)[0]
        special[i] = sc.special
        n_rows += sc.n_rows
    return {
        "pred": np.concatenate(preds) if preds else np.zeros((0, lh), np.int32),
        "mass": np.concatenate(masses) if masses else np.zeros((0, lh), np.float32),
        "hist": hist,
        "valid": valid,
        "max_n": np.int64(max_n),
        "n_rows": np.int64(n_rows),
        "special": special,
        "n_words": n_words,
    }
