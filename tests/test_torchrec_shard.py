"""Table-wise sharding of embslim collections over 2 gloo ranks, which methods allow it, and the TorchRec example."""
import importlib.util
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import embslim.nn as enn
from embslim.errors import ConfigError
from embslim.nn.shard import budget_share, table_plan

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "torchrec_convert.py"
WORLD = 2
BATCH = 16
ROWS = {"user": 800, "item": 400, "genre": 20}
FEATURE_ROWS = {"user": 800, "item": 400, "clicked_items": 400, "genre": 20}


def tables() -> list[enn.TableConfig]:
    counts = {name: np.random.default_rng(i).zipf(1.4, n).clip(max=100_000) for i, (name, n) in enumerate(ROWS.items())}
    return [enn.TableConfig("user", ROWS["user"], 8, counts=counts["user"]),
            enn.TableConfig("item", ROWS["item"], 8, ("item", "clicked_items"), pooling="mean", counts=counts["item"]),
            enn.TableConfig("genre", ROWS["genre"], 8, counts=counts["genre"])]


def features(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, rows in FEATURE_ROWS.items():
        lengths = torch.randint(0 if name == "clicked_items" else 1, 4, (BATCH,), generator=gen)
        out[name] = {"values": torch.randint(0, rows, (int(lengths.sum()),), generator=gen), "lengths": lengths}
    return out


def _worker(rank: int, path: str) -> None:
    """One rank: the sharded forward and table gradients (full, given weights), a qr forward, and a short qr training run."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))  # a stuck collective fails the test instead of hanging it
    weights = {t.name: torch.randn(t.num_embeddings, 8, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(tables())}
    full = enn.ShardedEmbeddingBagCollection(tables())
    if full.local is not None:
        full.local.load_weights({t.name: weights[t.name] for t in full.local_tables})
    pooled = full(features(0))
    sum(v.pow(2).sum() for v in pooled.values()).div(BATCH // WORLD).backward()
    grads = {t.name: full.local.set.embedding.table_of(i)[0].grad for i, t in enumerate(full.local_tables)}
    firsts = {t.name: int(full.local.set.embedding.table_of(i)[1]) for i, t in enumerate(full.local_tables)}
    grads = {name: g[firsts[name]:firsts[name] + ROWS[name]] for name, g in grads.items()}
    torch.manual_seed(1)
    qr = enn.ShardedEmbeddingBagCollection(tables(), method="qr", budget_bytes=0.2)
    with torch.no_grad():
        qr_pooled = qr(features(1))
    losses = _train(qr)
    torch.save({"full": {k: v.detach() for k, v in pooled.items()}, "grads": grads, "qr": qr_pooled, "losses": losses,
                "bytes": qr.memory_bytes()}, f"{path}/rank{rank}.pt")
    dist.destroy_process_group()


def _train(ebc: enn.ShardedEmbeddingBagCollection, steps: int = 30) -> list[float]:
    """Adam on a planted target: the label is the sign of a fixed projection of the user and item vectors."""
    torch.manual_seed(0)
    dense = DistributedDataParallel(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1)))
    opt = torch.optim.Adam(list(dense.parameters()) + list(ebc.parameters()), lr=0.02)
    losses = []
    for step in range(steps):
        batch = features(100 + step % 4)
        target = (batch["user"]["values"][batch["user"]["lengths"].cumsum(0) - 1] % 2).float()[ebc.batch_rows(BATCH)]
        pooled = ebc(batch)
        logits = dense(torch.cat([pooled[k] for k in FEATURE_ROWS], dim=1)).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    path = tmp_path_factory.mktemp("shard")
    mp.spawn(_worker, args=(str(path),), nprocs=WORLD, join=True)
    return [torch.load(path / f"rank{r}.pt") for r in range(WORLD)]


def _rows(rank: int) -> slice:
    return slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)


def test_sharded_forward_equals_the_unsharded_collection_given_the_same_weights(ranks):
    ebc = enn.EmbeddingBagCollection(tables())
    ebc.load_weights({t.name: torch.randn(t.num_embeddings, 8, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(tables())})
    expected = ebc(features(0))
    for rank, got in enumerate(ranks):
        assert list(got["full"]) == list(FEATURE_ROWS)
        for name, pooled in got["full"].items():
            assert torch.allclose(pooled, expected[name][_rows(rank)], atol=1e-6)


def test_table_gradients_reach_their_owner_as_those_of_the_global_mean_loss(ranks):
    ebc = enn.EmbeddingBagCollection(tables())
    ebc.load_weights({t.name: torch.randn(t.num_embeddings, 8, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(tables())})
    sum(v.pow(2).sum() for v in ebc(features(0)).values()).div(BATCH).backward()
    owners = {name: rank for rank, got in enumerate(ranks) for name in got["grads"]}
    assert sorted(owners) == sorted(ROWS)
    for i, t in enumerate(tables()):
        table, first = ebc.set.embedding.table_of(i)
        expected = table.grad[int(first):int(first) + t.num_embeddings]
        assert torch.allclose(ranks[owners[t.name]]["grads"][t.name], expected, atol=1e-5)


def test_a_compressed_method_sharded_equals_its_shards_run_in_one_process(ranks):
    plan = table_plan(tables(), WORLD)
    torch.manual_seed(1)  # each rank built its shard right after this seed
    expected = {}
    for rank in range(WORLD):
        torch.manual_seed(1)
        mine = [t for t, r in zip(tables(), plan) if r == rank]
        shard = enn.EmbeddingBagCollection(mine, method="qr", budget_bytes=0.2)
        with torch.no_grad():
            expected.update(shard({k: v for k, v in features(1).items() if any(k in t.features() for t in mine)}))
        assert ranks[rank]["bytes"] == shard.memory_bytes() <= 0.2 * sum(t.num_embeddings * 8 * 4 for t in mine)
    for rank, got in enumerate(ranks):
        for name, pooled in got["qr"].items():
            assert torch.allclose(pooled, expected[name][_rows(rank)], atol=1e-6)


def test_a_few_training_steps_on_two_ranks_reduce_the_loss(ranks):
    for got in ranks:
        losses = got["losses"]
        assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


def test_tables_go_to_ranks_by_size_and_a_byte_budget_is_split_by_fp32_size():
    assert table_plan(tables(), 2) == [0, 1, 1]
    mine = [t for t, r in zip(tables(), [0, 1, 1]) if r == 1]
    assert budget_share(10_000, tables(), mine) == 10_000 * (400 + 20) * 8 // ((800 + 400 + 20) * 8)
    assert budget_share(0.1, tables(), mine) == 0.1


@pytest.mark.parametrize("method,settings", [("full", {}), ("hash", {}), ("qr", {}), ("mde", {}), ("int8", {}), ("magnitude", {})])
def test_methods_with_per_table_storage_are_shardable(method, settings):
    assert enn.shardable(method, **settings)


@pytest.mark.parametrize("method,settings,shared", [("robe", {}, "array"), ("multiplex", {}, "table"), ("hash", {"shared": True}, "table")])
def test_methods_whose_tables_share_storage_are_not_and_say_which_tensor(method, settings, shared):
    assert not enn.shardable(method, **settings)
    with pytest.raises(ConfigError, match=shared):
        enn.ShardedEmbeddingBagCollection(tables(), method=method, budget_bytes=0.2, **settings)


def test_shared_storage_sees_one_concatenated_table_as_per_table_rows():
    ebc = enn.EmbeddingBagCollection(tables())
    assert len(list(ebc.set.embedding.parameters())) == 1 and enn.shared_storage(ebc.set.embedding) == []


def load_example():
    pytest.importorskip("torchrec")
    spec = importlib.util.spec_from_file_location("torchrec_convert", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_torchrec_example_converted_to_full_trains_exactly_as_torchrec_and_qr_fits_its_budget():
    example = load_example()
    args = ["--rows", "6000", "--epochs", "1"]
    theirs, full = example.main(args + ["--method", "torchrec"]), example.main(args + ["--method", "full"])
    assert full["auc"] == theirs["auc"]
    qr = example.main(args + ["--method", "qr", "--budget", "0.1"])
    assert 0.5 < qr["auc"] <= 1 and qr["bytes"] <= 0.1 * qr["full_bytes"]


def test_torchrec_example_trains_sharded_on_two_gloo_ranks_and_refuses_a_method_with_shared_storage():
    pytest.importorskip("torchrec")
    run = subprocess.run([sys.executable, str(EXAMPLE), "--method", "qr", "--budget", "0.1", "--ranks", "2", "--rows", "3000", "--epochs", "1", "--batch-size", "32"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    line = run.stdout.strip().splitlines()[-1]
    found = re.search(r"tables ([\d,]+) bytes \(([\d.]+)% of fp32\), per rank \[(\d+), (\d+)\].*loss ([\d.]+) -> ([\d.]+)", line)
    assert found, line
    total, percent, rank0, rank1, first, last = found.groups()
    assert int(total.replace(",", "")) == int(rank0) + int(rank1) and int(rank0) > 0 and int(rank1) > 0
    assert float(percent) <= 10.0 and float(last) < 0.95 * float(first)
    with pytest.raises(SystemExit, match="'robe' .* cannot be sharded by table"):
        load_example().main(["--method", "robe", "--budget", "0.1", "--ranks", "2"])


def test_byte_storage_read_by_two_fields_is_found_without_gradients():
    from embslim.data.fields import FieldSpec
    from embslim.embeddings.base import FeatureEmbedding
    from embslim.nn.shard import shared_storage

    class SharedCodes(FeatureEmbedding):
        def __init__(self, shared: bool) -> None:
            super().__init__()
            self.fields = [FieldSpec("a", 4, np.ones(4)), FieldSpec("b", 4, np.ones(4))]
            self.shared = shared
            self.register_buffer("codes", torch.arange(16, dtype=torch.uint8).view(8, 2))

        @property
        def dims(self) -> list[int]:
            return [2, 2]

        def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
            return self.codes[ids + (0 if self.shared else 4 * field)].float()

    assert shared_storage(SharedCodes(shared=True)) == ["codes"]
    assert shared_storage(SharedCodes(shared=False)) == []
