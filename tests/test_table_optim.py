"""Table optimisers: row-wise Adagrad's update, each optimiser's state bytes, and training with each."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from embslim.embeddings import EmbeddingConfig
from embslim.embeddings.base import StepContext
from embslim.errors import ConfigError
from embslim.train.run import RunConfig, build_model, describe_embedding, run
from embslim.train.table_optim import TABLE_OPTIMIZERS, RowWiseAdagrad, state_bytes
from embslim.train.trainer import TrainConfig, Trainer
from conftest import load_tiny, straight_and_resumed

FAST = TrainConfig(epochs=2, batch_size=256, patience=5, progress=False, seed=3)


def grads_for(rows: list[int], d: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.zeros(6, d)
    g[rows] = torch.randn(len(rows), d, generator=torch.Generator().manual_seed(seed))
    return g


def test_rowwise_adagrad_keeps_one_accumulator_per_row_from_the_mean_squared_gradient():
    w = nn.Parameter(torch.ones(6, 4))
    opt = RowWiseAdagrad([w], lr=0.1)
    g = grads_for([1, 4])
    w.grad = g.clone()
    opt.step()
    acc = g.pow(2).mean(dim=1)
    assert torch.allclose(opt.state[w]["sum"], acc)
    expected = torch.ones(6, 4)
    expected[[1, 4]] -= 0.1 * g[[1, 4]] / (acc[[1, 4]].sqrt().unsqueeze(1) + 1e-8)
    assert torch.allclose(w.detach(), expected)


def test_rowwise_adagrad_gives_the_same_update_for_sparse_and_dense_gradients():
    dense, sparse = nn.Parameter(torch.ones(6, 4)), nn.Parameter(torch.ones(6, 4))
    opts = RowWiseAdagrad([dense], lr=0.05), RowWiseAdagrad([sparse], lr=0.05)
    for step, rows in enumerate([[0, 2], [2, 5], [1, 2, 3]]):
        g = grads_for(rows, seed=step)
        dense.grad, sparse.grad = g.clone(), g.to_sparse(1)
        for opt in opts:
            opt.step()
    assert torch.allclose(dense.detach(), sparse.detach(), atol=1e-6)


def test_rowwise_adagrad_sums_a_rows_repeated_gradients_before_its_update():
    repeated, summed = nn.Parameter(torch.ones(6, 4)), nn.Parameter(torch.ones(6, 4))
    opts = RowWiseAdagrad([repeated], lr=0.05), RowWiseAdagrad([summed], lr=0.05)
    for step in range(3):
        values = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        rows = torch.tensor([[3, 1, 3, 0, 3]])  # what a lookup's sparse gradient holds: one row per lookup, unsorted
        repeated.grad = torch.sparse_coo_tensor(rows, values, (6, 4))
        summed.grad = repeated.grad.coalesce().to_dense()
        for opt in opts:
            opt.step()
    assert torch.allclose(repeated.detach(), summed.detach(), atol=1e-6)


@pytest.mark.parametrize("lr_decay", [0.0, 0.1])
def test_lazy_adagrad_updates_as_torchs_adagrad_on_repeated_row_gradients(lr_decay):
    from embslim.train.table_optim import LazyAdagrad

    ours, theirs = nn.Parameter(torch.ones(6, 4)), nn.Parameter(torch.ones(6, 4))
    opts = LazyAdagrad([ours], lr=0.05, lr_decay=lr_decay), torch.optim.Adagrad([theirs], lr=0.05, lr_decay=lr_decay)
    for step in range(4):
        values = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        rows = torch.tensor([[3, 1, 3, 0, 5 - step]])
        ours.grad = torch.sparse_coo_tensor(rows, values, (6, 4))
        theirs.grad = ours.grad.clone()
        for opt in opts:
            opt.step()
    assert torch.allclose(ours.detach(), theirs.detach(), atol=1e-6)
    assert torch.allclose(opts[0].state[ours]["sum"], opts[1].state[theirs]["sum"], atol=1e-6)


def test_lazy_sgd_updates_as_torchs_sgd_on_repeated_row_gradients():
    from embslim.train.table_optim import LazySGD

    ours, theirs = nn.Parameter(torch.ones(6, 4)), nn.Parameter(torch.ones(6, 4))
    opts = LazySGD([ours], lr=0.3), torch.optim.SGD([theirs], lr=0.3)
    for step in range(3):
        values = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        ours.grad = torch.sparse_coo_tensor(torch.tensor([[3, 1, 3, 0, 5 - step]]), values, (6, 4))
        theirs.grad = ours.grad.clone()
        for opt in opts:
            opt.step()
    assert torch.allclose(ours.detach(), theirs.detach(), atol=1e-6)


def test_state_bytes_per_optimizer_at_dim_16():
    p = [nn.Parameter(torch.zeros(100, 16))]
    assert state_bytes("adam", p) == 2 * 6400 and state_bytes("adagrad", p) == 6400
    assert state_bytes("rowwise-adagrad", p) == 400 and state_bytes("sgd", p) == 0


def test_reset_state_zeroes_the_rows_of_a_row_wise_accumulator():
    w = nn.Parameter(torch.ones(6, 4))
    opt = RowWiseAdagrad([w])
    w.grad = torch.ones(6, 4)
    opt.step()
    StepContext(1, 1, [opt]).reset_state(w, torch.tensor([True, False, False, True, False, False]).unsqueeze(1).expand(6, 4))
    assert opt.state[w]["sum"].tolist() == [0, 1, 1, 0, 1, 1]


@pytest.mark.parametrize("kind", TABLE_OPTIMIZERS)
def test_every_table_optimizer_trains(kind):
    lr = {"adam": None, "sgd": 0.5}.get(kind, 0.05)
    r = run(load_tiny(), RunConfig("fm", EmbeddingConfig(dim=8), train=replace(FAST, table_optimizer=kind, table_lr=lr)))
    assert r["history"][-1]["train_loss"] < r["history"][0]["train_loss"] and r["metrics"]["test"]["auc"] > 0.55


def test_training_bytes_count_each_table_optimizers_state():
    model, _ = build_model(load_tiny(), RunConfig("fm", EmbeddingConfig(dim=8), train=FAST))
    train = {k: describe_embedding(model, k)["train_bytes"] for k in TABLE_OPTIMIZERS}
    values = sum(p.numel() * 4 for p in model.embedding.sparse_parameters())
    assert train["adam"] - train["adagrad"] == train["adagrad"] - train["sgd"] == values
    assert train["rowwise-adagrad"] - train["sgd"] == sum(p.shape[0] * 4 for p in model.embedding.sparse_parameters()) == values // 8


def test_resume_with_rowwise_adagrad_ends_like_an_uninterrupted_run(tmp_path):
    config = RunConfig("deepfm", train=replace(FAST, epochs=3, table_optimizer="rowwise-adagrad", table_lr=0.05))
    straight, resumed = straight_and_resumed(config, tmp_path, at_step=15)
    assert resumed["metrics"] == straight["metrics"]


def test_unknown_table_optimizer_is_a_config_error():
    data = load_tiny()
    model, d = build_model(data, RunConfig("fm", train=FAST))
    with pytest.raises(ConfigError, match="table optimizer"):
        Trainer(model, d, replace(FAST, table_optimizer="lamb"))
