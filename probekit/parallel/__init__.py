"""Data-parallel analyses on Ray: one analysis over a corpus split into shards of whole capture batches.

``shards`` (the plan, the store of finished shards, the Ray worker pool), ``heads`` (head scoring:
workers capture and reduce, the driver combines), ``probes`` (workers capture residual streams, the
driver fits). Results are byte-identical to the local run at the same torch thread count; see
``docs/scale-out.md``.
"""

from probekit.parallel.heads import ShardedModel, sharded_model
from probekit.parallel.probes import sharded_streams
from probekit.parallel.shards import RayOptions, ShardStore, plan_shards

__all__ = ["RayOptions", "ShardStore", "ShardedModel", "plan_shards", "sharded_model", "sharded_streams"]
