"""embslim.nn.EmbeddingBagCollection: keyed features, many tables under one budget, TorchRec's shape."""
import numpy as np
import pytest
import torch
from torch import nn

import embslim.nn as enn
from embslim.embeddings import load_artifact
from embslim.errors import ConfigError

ROWS = {"user": 800, "item": 400, "genre": 20}
COUNTS = {name: np.random.default_rng(i).zipf(1.4, n).clip(max=100_000) for i, (name, n) in enumerate(ROWS.items())}


def tables(dim: int = 8) -> list[enn.TableConfig]:
    return [enn.TableConfig("user", ROWS["user"], dim, counts=COUNTS["user"]),
            enn.TableConfig("item", ROWS["item"], dim, ("item", "clicked_items"), pooling="mean", counts=COUNTS["item"]),
            enn.TableConfig("genre", ROWS["genre"], dim, counts=COUNTS["genre"])]


def features(batch: int = 16, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, rows in (("user", 800), ("item", 400), ("clicked_items", 400), ("genre", 20)):
        lengths = torch.randint(0 if name == "clicked_items" else 1, 4, (batch,), generator=gen)
        out[name] = {"values": torch.randint(0, rows, (int(lengths.sum()),), generator=gen), "lengths": lengths}
    return out


def test_full_collection_matches_one_torch_bag_per_table_given_the_same_weights():
    ebc = enn.EmbeddingBagCollection(tables())
    torch_bags = {t.name: nn.EmbeddingBag(t.num_embeddings, 8, mode=t.pooling) for t in tables()}
    ebc.load_weights({name: bag.weight for name, bag in torch_bags.items()})
    table_of = {"user": "user", "item": "item", "clicked_items": "item", "genre": "genre"}
    for name, pooled in ebc(features()).items():
        f = features()[name]
        starts = torch.cat([torch.zeros(1, dtype=torch.long), f["lengths"].cumsum(0)[:-1]])
        assert torch.allclose(pooled, torch_bags[table_of[name]](f["values"], starts), atol=1e-6)


def test_features_sharing_a_table_read_the_same_rows():
    ebc = enn.EmbeddingBagCollection(tables(), method="hash", budget_bytes=0.3)
    ids = torch.tensor([3, 7, 7])
    out = ebc({"item": (ids, torch.tensor([0, 1, 2])), "clicked_items": (ids, torch.tensor([0, 1, 2]))})
    assert torch.equal(out["item"], out["clicked_items"])


def test_torch_offsets_lengths_and_torchrec_offsets_give_the_same_result():
    ebc = enn.EmbeddingBagCollection(tables(), method="qr", budget_bytes=0.3)
    values, lengths = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([2, 0, 3])
    a = ebc({"user": (values, torch.tensor([0, 2, 2]))})["user"]
    b = ebc({"user": {"values": values, "lengths": lengths}})["user"]
    c = ebc({"user": {"values": values, "offsets": torch.tensor([0, 2, 2, 5])}})["user"]
    assert torch.equal(a, b) and torch.equal(b, c) and torch.equal(a[1], torch.zeros(8))


@pytest.mark.parametrize("method", ["mde", "hash", "int8", "magnitude"])
def test_one_budget_covers_all_tables_and_the_method_splits_it(method, tmp_path):
    full = enn.EmbeddingBagCollection(tables(16)).memory_bytes()
    ebc = enn.EmbeddingBagCollection(tables(16), method=method, budget_bytes=0.3, total_steps=10)
    opt = torch.optim.Adam(ebc.parameters(), lr=0.01)
    for step in range(10):
        loss = sum(v.pow(2).sum() for v in ebc(features(seed=step)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ebc.memory_bytes() <= 0.3 * full
    ebc.eval()
    ebc.export(tmp_path / "tables.safetensors")
    assert load_artifact(tmp_path / "tables.safetensors").memory_bytes() == ebc.memory_bytes()


@pytest.mark.parametrize("bad,match", [(lambda t: t + [enn.TableConfig("user", 5, 8)], "unique"),
                                       (lambda t: [enn.TableConfig("a", 5, 8, pooling="max")], "pooling"),
                                       (lambda t: [enn.TableConfig("a", 5, 8), enn.TableConfig("b", 5, 4)], "widths")])
def test_bad_table_lists_are_one_line_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        enn.EmbeddingBagCollection(bad(tables()), method="hash" if match == "widths" else "full", budget_bytes=0.5 if match == "widths" else None)


def test_unknown_feature_names_the_known_ones():
    with pytest.raises(KeyError, match="clicked_items"):
        enn.EmbeddingBagCollection(tables())({"nope": (torch.tensor([1]), torch.tensor([0]))})


def test_torchrec_collection_converts_with_its_weights():
    pytest.importorskip("torchrec")
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection as TorchRecEBC
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    configs = [EmbeddingBagConfig(name="t_user", embedding_dim=8, num_embeddings=50, feature_names=["user"], pooling=PoolingType.SUM),
               EmbeddingBagConfig(name="t_item", embedding_dim=8, num_embeddings=30, feature_names=["item"], pooling=PoolingType.MEAN)]
    theirs = TorchRecEBC(tables=configs)
    ours = enn.EmbeddingBagCollection.from_torchrec(theirs)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.tensor([1, 2, 3, 4, 5]), lengths=torch.tensor([1, 1, 2, 1]))
    assert torch.allclose(ours(kjt).values(), theirs(kjt).values(), atol=1e-6)
    slim = enn.EmbeddingBagCollection.from_torchrec(configs, method="hash", budget_bytes=0.5)
    assert slim(kjt).values().shape == (2, 16)
