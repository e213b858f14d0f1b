"""embslim.nn: drop-in EmbeddingBag and Embedding that a torch model and its own loop use unchanged."""
import numpy as np
import pytest
import torch
from torch import nn

import embslim.nn as enn
from embslim.embeddings import list_embeddings, load_artifact, method_info
from embslim.errors import ConfigError

N, D = 500, 16
COUNTS = np.random.default_rng(0).zipf(1.5, N).clip(max=10_000)


STEPS = 30


def swappable() -> list[str]:
    """Every method a table is built with from a budget (searches run through embslim's search API instead)."""
    return [m for m in list_embeddings() if method_info(m).budgeted and method_info(m).source != "search"]


def bags(seed: int = 0, batch: int = 32):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (batch,), generator=gen)
    values = torch.randint(0, N, (int(lengths.sum()),), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return values, offsets


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_full_bag_matches_torch_exactly_given_the_same_weights(mode, padding_idx):
    ours = enn.EmbeddingBag(N, D, mode=mode, padding_idx=padding_idx)
    theirs = nn.EmbeddingBag(N, D, mode=mode, padding_idx=padding_idx)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
    values, offsets = bags()
    values[:5] = 3
    assert torch.equal(ours(values, offsets), theirs(values, offsets))
    assert torch.equal(ours(values[:30].reshape(6, 5)), theirs(values[:30].reshape(6, 5)))


def test_full_bag_matches_torch_with_per_sample_weights_and_a_last_offset():
    theirs = nn.EmbeddingBag(N, D, mode="sum", include_last_offset=True)
    ours = enn.EmbeddingBag.from_pretrained(theirs.weight.detach(), freeze=False, mode="sum", include_last_offset=True)
    values, offsets = bags(1)
    offsets = torch.cat([offsets, torch.tensor([len(values)])])
    weights = torch.rand(len(values))
    assert torch.equal(ours(values, offsets, weights), theirs(values, offsets, weights))


def test_full_embedding_matches_torch_exactly_including_padding():
    theirs = nn.Embedding(N, D, padding_idx=0)
    ours = enn.Embedding(N, D, padding_idx=0)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
    ids = torch.randint(0, N, (4, 7))
    ids[0, 0] = 0
    assert torch.equal(ours(ids), theirs(ids))
    assert torch.equal(ours(ids)[0, 0], torch.zeros(D))


class UserModel(nn.Module):
    """A model written against torch.nn.EmbeddingBag: the swap changes one line."""

    def __init__(self, make_bag):
        super().__init__()
        self.bag = make_bag()
        self.head = nn.Linear(D, 1)

    def forward(self, values, offsets):
        return self.head(self.bag(values, offsets)).squeeze(1)


def train_user_loop(model: nn.Module, steps: int = STEPS) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for step in range(steps):
        values, offsets = bags(step % 4)
        target = torch.arange(32).remainder(2).float()
        loss = nn.functional.binary_cross_entropy_with_logits(model(values, offsets), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", swappable())
def test_swapped_in_bag_trains_in_a_plain_adam_loop_within_its_budget(method):
    torch.manual_seed(0)
    budget = int(0.25 * N * D * 4)
    model = UserModel(lambda: enn.EmbeddingBag(N, D, mode="sum", method=method, budget_bytes=budget, counts=COUNTS,
                                                   total_steps=STEPS))
    before = {k: v.clone() for k, v in model.bag.state_dict().items() if torch.is_tensor(v)}
    losses = train_user_loop(model)
    assert model.bag.memory_bytes() <= budget
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    changed = [k for k, v in model.bag.state_dict().items() if k in before and v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "the table did not train"


@pytest.mark.parametrize("method", ["int8", "int4", "fp16"])
def test_converter_evaluates_exactly_what_its_artifact_serves(method, tmp_path):
    torch.manual_seed(0)
    model = UserModel(lambda: enn.EmbeddingBag(N, D, mode="sum", method=method))
    train_user_loop(model, steps=5)
    model.eval()
    values, offsets = bags(3)
    model.bag.export(tmp_path / "table.safetensors")
    served = load_artifact(tmp_path / "table.safetensors")
    pooled = torch.zeros(len(offsets), D).index_add(
        0, torch.arange(len(offsets)).repeat_interleave(torch.diff(torch.cat([offsets, torch.tensor([len(values)])]))),
        served.lookup(0, values))
    assert torch.allclose(model.bag(values, offsets), pooled, atol=1e-6)
    assert served.memory_bytes() == model.bag.memory_bytes() < N * D * 4


def test_converter_reconverts_after_the_weights_change():
    model = UserModel(lambda: enn.EmbeddingBag(N, D, mode="sum", method="int8"))
    values, offsets = bags(0)
    model.eval()
    before = model.bag(values, offsets)
    model.train()
    train_user_loop(model, steps=3)
    model.eval()
    assert not torch.equal(model.bag(values, offsets), before)


def test_scheduled_method_without_total_steps_is_a_config_error():
    with pytest.raises(ConfigError, match="total_steps"):
        enn.EmbeddingBag(N, D, method="magnitude", budget_bytes=0.3)


def test_scheduled_method_reaches_its_budget_by_the_planned_steps_in_a_plain_loop():
    budget = int(0.3 * N * D * 4)
    model = UserModel(lambda: enn.EmbeddingBag(N, D, mode="sum", method="magnitude", budget_bytes=budget, total_steps=STEPS))
    train_user_loop(model)
    assert model.bag.embedding.size_is_final() and model.bag.memory_bytes() <= budget
    table, mask = model.bag.embedding.tables[0], model.bag.embedding.masks()[0]
    assert torch.equal(table.detach()[~mask], torch.zeros(int((~mask).sum())))


@pytest.mark.parametrize("kwargs,match", [({"mode": "median"}, "mode"), ({"budget_bytes": 1.5}, "fraction"),
                                          ({"counts": np.ones(3)}, "counts"), ({"method": "nope"}, "unknown embedding"),
                                          ({"padding_idx": N}, "padding_idx")])
def test_bad_arguments_are_one_line_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        enn.EmbeddingBag(N, D, **kwargs)
    assert "\n" not in str(err.value)


def test_sparse_true_keeps_sparse_gradients_and_the_default_is_dense():
    for sparse in (True, False):
        bag = enn.EmbeddingBag(N, D, mode="sum", method="hash", budget_bytes=0.25, sparse=sparse)
        values, offsets = bags(0)
        bag(values, offsets).sum().backward()
        assert all(p.grad.is_sparse == sparse for p in bag.table.embedding.sparse_parameters())


def test_table_adam_trains_sparse_tables_that_plain_adam_rejects():
    torch.manual_seed(0)
    model = UserModel(lambda: enn.EmbeddingBag(N, D, mode="sum", method="hash", budget_bytes=0.25, sparse=True))
    values, offsets = bags(0)
    model(values, offsets).sum().backward()
    with pytest.raises(RuntimeError):
        torch.optim.Adam(model.parameters()).step()
    model.zero_grad()
    for given_model in (None, model):
        opt = enn.TableAdam(model.parameters(), lr=0.01, model=given_model)
        before = model.bag.table.embedding.sparse_parameters()[0].detach().clone()
        for step in range(3):
            loss = model(*bags(step)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert not torch.equal(before, model.bag.table.embedding.sparse_parameters()[0])
        assert any(isinstance(o, torch.optim.SparseAdam) for o in opt.optimizers)


def test_table_adam_state_round_trips():
    model = UserModel(lambda: enn.EmbeddingBag(N, D, mode="sum", method="hash", budget_bytes=0.25, sparse=True))
    opt = enn.TableAdam(model.parameters(), lr=0.01)
    model(*bags(0)).sum().backward()
    opt.step()
    again = enn.TableAdam(model.parameters(), lr=0.01)
    again.load_state_dict(opt.state_dict())
    assert again.sparse_index == opt.sparse_index and len(again.optimizers) == 2
