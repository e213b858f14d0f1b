"""embslim tables handed to TorchRec: `full` becomes TorchRec tables with the same rows, sharded by TorchRec's own
DistributedModelParallel on 2 gloo ranks; methods without a TorchRec equivalent say how to shard them instead."""
import re
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import embslim.nn as enn
from embslim.errors import ConfigError
from test_torchrec_shard import EXAMPLE, FEATURE_ROWS, WORLD, features, tables


def full_collection() -> enn.EmbeddingBagCollection:
    ebc = enn.EmbeddingBagCollection(tables())
    ebc.load_weights({t.name: torch.randn(t.num_embeddings, 8, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(tables())})
    return ebc


def keyed(batch: dict):
    """The dict features as TorchRec's KeyedJaggedTensor (feature-major values)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    keys = list(FEATURE_ROWS)
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat([batch[k]["values"] for k in keys]),
                                               lengths=torch.cat([batch[k]["lengths"] for k in keys]).int())


def test_a_full_collection_handed_to_torchrec_pools_the_same_vectors():
    pytest.importorskip("torchrec")
    ebc = full_collection()
    theirs = enn.to_torchrec(ebc)(keyed(features(3))).to_dict()
    ours = ebc(features(3))
    for key in FEATURE_ROWS:
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method,settings", [("qr", {"budget_bytes": 0.2}), ("int2", {}), ("mde", {"budget_bytes": 0.2})])
def test_a_method_without_torchrec_tables_is_refused_with_how_to_shard_it(method, settings):
    ebc = enn.EmbeddingBagCollection(tables(), method=method, **settings)
    with pytest.raises(ConfigError, match=f"'{method}' has no TorchRec table equivalent.*ShardedEmbeddingBagCollection"):
        enn.torchrec_configs(ebc)
    assert enn.why_no_torchrec_table("full") is None and enn.why_no_torchrec_table("int8") is None
    assert "eviction policy" in enn.why_no_torchrec_table("collisionless")


def test_int8_is_served_by_torchrec_but_not_trained_by_it():
    assert enn.why_no_torchrec_table("full", training=True) is None
    assert "not trained by them" in enn.why_no_torchrec_table("int8", training=True)
    with pytest.raises(ConfigError, match="not trained by them"):
        enn.table_weights(enn.EmbeddingBagCollection(tables(), method="int8"))


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_a_quantized_collection_is_served_by_torchrecs_quantized_tables_with_embslims_codes(method):
    pytest.importorskip("torchrec")
    ebc = enn.EmbeddingBagCollection(tables(), method=method).eval()
    module = enn.to_torchrec(ebc)
    assert type(module).__module__ == "torchrec.quant.embedding_modules"
    theirs, ours = module(keyed(features(4))).to_dict(), ebc(features(4))
    for key in FEATURE_ROWS:
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-6, atol=1e-6)


def _dmp_worker(rank: int, path: str) -> None:
    """One rank: TorchRec's DistributedModelParallel shards the handed-over tables (user column-wise, item table-wise, genre
    replicated), the collection's rows are loaded into the shards, and this rank pools its own batch."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingEnv

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    source = full_collection()
    module = enn.to_torchrec(source, device="meta")
    kinds = {"user": "column_wise", "item": "table_wise", "genre": "data_parallel"}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=WORLD, compute_device="cpu"),
                                       constraints={name: ParameterConstraints(sharding_types=[kind], min_partition=4) for name, kind in kinds.items()})
    plan = planner.collective_plan(module, None, dist.group.WORLD)
    model = DistributedModelParallel(module, env=ShardingEnv.from_process_group(dist.group.WORLD), plan=plan, device=torch.device("cpu"))
    filled = enn.load_sharded_weights(model, enn.table_weights(source))
    batch = features(20 + rank)
    with torch.no_grad():
        pooled = model(keyed(batch))
        pooled = (pooled.wait() if hasattr(pooled, "wait") else pooled).to_dict()
        expected = source(batch)
    torch.save({"pooled": pooled, "expected": expected, "filled": filled,
                "types": {name: spec.sharding_type for name, spec in plan.plan[""].items()}}, f"{path}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_full_tables_sharded_by_torchrec_on_two_ranks_pool_what_the_collection_pools(tmp_path):
    pytest.importorskip("torchrec")
    mp.spawn(_dmp_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert ranks[0]["types"] == {"user": "column_wise", "item": "table_wise", "genre": "data_parallel"}
    assert sum(r["filled"] for r in ranks) == 5  # user as two column shards, item once, genre on each rank
    for r in ranks:
        for key in FEATURE_ROWS:
            torch.testing.assert_close(r["pooled"][key], r["expected"][key], rtol=1e-6, atol=1e-6)


def test_torchrec_example_shards_the_criteo_shaped_model_with_torchrec_and_it_trains():
    pytest.importorskip("torchrec")
    run = subprocess.run([sys.executable, str(EXAMPLE), "--criteo-shaped", "--rows", "20000", "--method", "full", "--sharder", "torchrec",
                          "--ranks", "2", "--epochs", "1", "--batch-size", "256"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    line = run.stdout.strip().splitlines()[-1]
    found = re.search(r"tables ([\d,]+) bytes \(([\d.]+)% of fp32\), per rank \[(\d+), (\d+)\].*loss ([\d.]+) -> ([\d.]+)", line)
    assert found, line
    total, percent, rank0, rank1, first, last = found.groups()
    assert int(rank0) > 0 and int(rank1) > 0 and float(percent) >= 100.0  # every table placed, small ones replicated
    assert float(last) < 0.97 * float(first)
    refused = subprocess.run([sys.executable, str(EXAMPLE), "--method", "qr", "--budget", "0.1", "--sharder", "torchrec", "--ranks", "2"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "'qr' has no TorchRec table equivalent" in refused.stderr
