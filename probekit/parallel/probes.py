"""Probes over shards: workers capture the residual streams shard by shard, the driver fits the probes.

A probe's fit needs every training instance at once (the ridge probe picks its penalty by leave-one-out
over the instances, the logistic probe by cross-validation), so the workers do the expensive part, the
forward passes, and write each shard's residual streams into the capture cache
(``$PROBEKIT_CACHE/capture``, one entry per shard). The driver then reads the shards' memory-mapped
streams, one layer at a time, and fits exactly as a local run does. Shards are whole capture batches
(`probekit.parallel.shards.plan_shards`), so every vector is the same bits as the local capture's and
``probes.csv`` is identical. The cache must be on storage the driver can read (``docs/scale-out.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.errors import ProbekitError
from probekit.parallel.heads import ShardedModel
from probekit.parallel.shards import ShardJob, plan_shards, run_on_ray, shard_key

#: The capture batch size of `probekit.analyses.probes.streams.capture_streams` (capture's default).
STREAM_BATCH_SIZE = 16


def capture_shard(model, spec: dict) -> dict[str, np.ndarray]:
    """Worker side: capture one shard's residual streams into the capture cache; return its folder."""
    from probekit.analyses.probes.streams import capture_streams

    cap = capture_streams(model, spec["sentences"], spec["layers"])
    return {"path": np.array(str(cap.path))}


def _usable(result: dict) -> bool:
    from probekit.activations.cache import check_entry

    return check_entry(Path(str(result["path"])), checksums=False) is None


@dataclass(eq=False)
class ShardedStreams:
    """The shards' captures seen as one capture (what `probekit.analyses.probes.probe_layers` reads):
    ``index`` and ``stream(layer)`` list the shards' words one shard after the other, and the probes
    find each instance's row through ``index``, so the order does not change any number."""

    captures: list

    @property
    def index(self) -> pd.MultiIndex:
        return pd.MultiIndex.from_tuples(
            [row for cap in self.captures for row in cap.index], names=["sentence_id", "word_id", "word"]
        )

    @property
    def stream_layers(self) -> list[int]:
        return list(self.captures[0].stream_layers)

    def stream(self, layer: int) -> np.ndarray:
        return np.concatenate([np.asarray(cap.stream(layer)) for cap in self.captures])


def sharded_streams(model: ShardedModel, sentences: list, layers="all") -> ShardedStreams:
    """Capture the residual-stream layers ``layers`` of ``sentences`` on Ray workers (`capture_streams`
    settings), shard by shard; the driver must see the workers' capture cache.

    Parameters
    ----------
    model : a `probekit.parallel.heads.ShardedModel` (or its ``random_twin``).
    sentences : the dataset's sentences, in order.
    layers : as in `probekit.analyses.probes.probe_layers`.

    Returns
    -------
    ShardedStreams
        Pass it as ``capture`` (or ``random_capture``) to the probe functions.
    """
    from probekit.activations.align import align_many
    from probekit.activations.capture import Capture

    shards = plan_shards(
        [e.n_tokens for e in align_many(model.tokenizer, sentences)], STREAM_BATCH_SIZE, model.shard_size
    )
    jobs = []
    for shard in shards:
        chosen = [sentences[i] for i in shard.indices]
        spec = {"shard": shard.id, "model": model.name, "device": model.device, "seed": model.seed}
        spec["sentences"] = chosen
        spec["layers"] = layers if isinstance(layers, str) else [int(x) for x in layers]
        payload = {
            "model": model.name,
            "device": model.device,
            "fingerprint": model.fingerprint,
            "layers": spec["layers"],
            "sentences": [[s.id, list(s.words), list(s.space_after or [])] for s in chosen],
        }
        jobs.append(ShardJob(shard, shard_key("streams", payload), capture_shard, spec))
    results = run_on_ray(jobs, model.options, model.store, usable=_usable)
    captures = []
    for shard in shards:
        path = Path(str(results[shard.id]["path"]))
        if not path.is_dir():
            raise ProbekitError(
                f"the capture of shard {shard.id} was written to {path}, which this machine cannot read",
                where="probes on Ray",
                fix="put PROBEKIT_CACHE on storage shared by every node (same path), see docs/scale-out.md",
            )
        captures.append(Capture(path, [sentences[i] for i in shard.indices]))
    return ShardedStreams(captures)
