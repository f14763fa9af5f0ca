"""Data-parallel analyses on Ray (`probekit.parallel`): shards of whole capture batches, a simulated
two-node cluster (`ray.cluster_utils.Cluster`), and tables identical byte for byte to the local run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import probekit as pk
from probekit.analyses.heads import analyze_heads
from probekit.analyses.probes import analyze_probes
from probekit.errors import ProbekitError
from probekit.parallel import RayOptions, ShardStore, plan_shards, sharded_model, sharded_streams

HEADS = {"n_boot": 50, "n_perm": 20, "progress": False, "detector": False, "batch_size": 4}
HEADS["relations"] = ["nsubj", "amod"]


def test_plan_shards_cuts_the_capture_order_into_whole_batches():
    # capture order by (tokens, index): 1(3) 3(3) | 4(4) 0(5) | 2(9); shard_size 3 -> 4 (two batches of 2)
    shards = plan_shards([5, 3, 9, 3, 4], batch_size=2, shard_size=3)
    assert [(s.id, s.indices) for s in shards] == [(0, (0, 1, 3, 4)), (1, (2,))]
    assert plan_shards([5, 3, 9, 3, 4], batch_size=2, shard_size=3) == shards  # stable
    with pytest.raises(ProbekitError, match="shard_size"):
        plan_shards([1], batch_size=2, shard_size=0)


def test_a_shard_captures_the_same_bits_as_the_whole_corpus(tiny_llama, tmp_path):
    """Why shards are whole batches: each sentence is padded exactly as in the one-process capture."""
    from probekit.activations.align import align

    data = pk.load_dataset("template:svo_adj?n=12")
    whole = pk.capture(tiny_llama, data, batch_size=4, cache_dir=tmp_path, progress=False)
    n_tokens = [align(tiny_llama, s).n_tokens for s in data.sentences]
    for shard in plan_shards(n_tokens, batch_size=4, shard_size=4):
        part = pk.capture(
            tiny_llama,
            [data.sentences[i] for i in shard.indices],
            batch_size=4,
            cache_dir=tmp_path,
            progress=False,
        )
        for j, i in enumerate(shard.indices):
            assert np.array_equal(part.attention(j), whole.attention(i))
            rows = whole.sentence_rows(i)
            assert np.array_equal(
                part.resid("resid_post", 1)[part.sentence_rows(j)], whole.resid("resid_post", 1)[rows]
            )


@pytest.fixture(scope="module")
def cluster():
    """A simulated two-node Ray cluster on this machine, one CPU per node."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'probekit-mi[ray]')")
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="pkrs-")  # short: Ray's socket paths must stay under 107 characters
    head = {"num_cpus": 1, "temp_dir": temp, "object_store_memory": 80 * 1024**2, "include_dashboard": False}
    try:
        c = Cluster(initialize_head=True, head_node_args=head)
        c.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
        ray.init(address=c.address, log_to_driver=False)
    except Exception as err:  # Ray could not start here (e.g. no shared memory): say so, do not fail
        shutil.rmtree(temp, ignore_errors=True)
        pytest.skip(f"a local Ray cluster could not start: {err}")
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    yield RayOptions(workers=2)  # one worker per node; the tests share its pool of worker processes
    ray.shutdown()
    c.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _one_thread(fn):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count (one CPU each): same bits
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def heads_runs(cluster, tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    data = pk.load_dataset("template:svo_adj?n=16")
    local = _one_thread(lambda: analyze_heads(tiny_llama, data, random_baseline=True, **HEADS))
    local.write(root / "local", heatmaps=False)
    store = ShardStore(root / "store")
    # shard 0 raises on its first try, shard 1's worker dies on its first try: both are retried
    cluster.faults = {0: "raise", 1: "exit"}
    try:
        model = sharded_model(tiny_llama, cluster, shard_size=8, store=store)
        ray = analyze_heads(model, data, random_baseline=True, random_model=model.random_twin(), **HEADS)
    finally:
        cluster.faults = {}
    ray.write(root / "ray", heatmaps=False)
    return root, data, model, store


def test_heads_on_a_two_node_cluster_match_the_local_run_byte_for_byte(heads_runs):
    root, *_ = heads_runs
    local, ray = _files(root / "local"), _files(root / "ray")
    assert "heads.csv" in ray and set(ray) == set(local)
    assert [name for name in ray if ray[name] != local[name]] == []


def test_a_rerun_reuses_every_finished_shard(heads_runs):
    root, data, model, store = heads_runs
    assert len(list(store.root.iterdir())) == 2 * 2  # 16 sentences / 8 per shard, trained + random model
    # every shard would fail if it were sent to a worker again
    model.options = RayOptions(workers=2, max_retries=0, faults=dict.fromkeys(range(2), "raise"))
    again = analyze_heads(model, data, random_baseline=True, random_model=model.random_twin(), **HEADS)
    again.write(root / "again", heatmaps=False)
    assert _files(root / "again") == _files(root / "ray")


def test_a_shard_that_keeps_failing_stops_the_run(cluster, tiny_llama, tmp_path):
    data = pk.load_dataset("template:svo_adj?n=8")
    cluster.faults, cluster.max_retries = {0: "raise-always"}, 1
    model = sharded_model(tiny_llama, cluster, shard_size=8, store=ShardStore(tmp_path))
    try:
        with pytest.raises(ProbekitError, match=r"shard 0 failed 2 times: .*injected fault"):
            analyze_heads(model, data, **{**HEADS, "relations": ["prev_word"]})
    finally:
        cluster.faults, cluster.max_retries = {}, 2
    assert list(tmp_path.iterdir()) == []  # nothing is kept from a failed shard


def test_probes_on_a_two_node_cluster_match_the_local_run(cluster, tiny_llama, tmp_path):
    data = pk.load_dataset("template:svo_adj?n=24")
    kwargs = {"seeds": (0,), "n_boot": 50, "random_model": False}
    local = _one_thread(lambda: analyze_probes(tiny_llama, data, "upos", [0, 2], **kwargs))
    model = sharded_model(tiny_llama, cluster, shard_size=8, store=ShardStore(tmp_path / "store"))
    capture = sharded_streams(model, list(data.sentences), [0, 2])
    assert len(capture.captures) == 2  # 24 sentences, shard size rounded up to 16 (capture batches of 16)
    ray = analyze_probes(tiny_llama, data, "upos", [0, 2], capture=capture, **kwargs)
    local.write(tmp_path / "local")
    ray.write(tmp_path / "ray")
    assert (tmp_path / "ray" / "probes.csv").read_bytes() == (tmp_path / "local" / "probes.csv").read_bytes()


def test_an_experiment_run_with_the_ray_backend_writes_the_local_tables(cluster, tmp_path):
    """`probekit run --backend ray`: the heads and probes stages shard over the cluster, same tables."""
    from functools import partial

    from probekit.experiment import validate_config
    from probekit.experiment.run import run_experiment

    cfg = validate_config(
        {
            "name": "shards",
            "seed": 0,
            "out": str(tmp_path / "unused"),
            "models": ["tiny-llama"],
            "batch_size": 4,
            "data": {"svo": "template:svo_adj?n=12"},
            "analyses": {
                "heads": {"data": ["svo"], "relations": ["nsubj"], "n_boot": 100, "n_perm": 10},
                "probes": [{"data": "svo", "tasks": ["upos"], "layers": [0, 2], "seeds": [0]}],
            },
        }
    )
    local = _one_thread(lambda: run_experiment(cfg, out=tmp_path / "local", progress=False))
    parallel = partial(sharded_model, options=cluster, shard_size=8, store=False)
    ray = run_experiment(cfg, out=tmp_path / "ray", progress=False, parallel=parallel)
    for table in ("heads/tiny-llama__svo/heads.csv", "probes/tiny-llama__svo/probes.csv"):
        assert (ray / table).read_bytes() == (local / table).read_bytes(), table
