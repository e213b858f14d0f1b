"""`--table-optimizer fbgemm-*`: FBGEMM's fused kernel trains `full` tables exactly as the pure-PyTorch optimisers do.

Tests that run the kernel are skipped where fbgemm_gpu is not installed (CI installs it with `make torchrec`);
the errors for a missing install and for methods the path cannot take run everywhere.
"""
import copy
import json
import sys
from dataclasses import replace

import pytest
import torch

from embslim.cli import main
from embslim.embeddings import EmbeddingConfig
from embslim.embeddings.base import StepContext
from embslim.errors import ConfigError
from embslim.train.run import RunConfig, build_model
from embslim.train.table_optim import state_bytes
from embslim.train.trainer import TrainConfig, Trainer
from conftest import load_tiny, straight_and_resumed

FAST = TrainConfig(epochs=1, batch_size=256, patience=5, progress=False, seed=3)
PAIRS = [("fbgemm-rowwise-adagrad", "rowwise-adagrad", 0.05), ("fbgemm-adagrad", "adagrad", 0.05), ("fbgemm-sgd", "sgd", 0.5)]


def trained(kind: str, lr: float, model: str = "fm", epochs: int = 1):
    """A model after `epochs` of the same seeded batches, its tables trained by `kind`."""
    config = RunConfig(model, EmbeddingConfig(dim=8), train=replace(FAST, epochs=epochs, table_optimizer=kind, table_lr=lr))
    model_, data = build_model(load_tiny(), config)
    trainer = Trainer(model_, data, config.train)
    torch.manual_seed(0)
    for epoch in range(epochs):
        trainer.train_epoch(epoch)
    return model_, trainer


@pytest.mark.parametrize("fused,pure,lr", PAIRS)
def test_fbgemm_kernel_trains_the_same_tables_as_the_pure_pytorch_optimizer(fused, pure, lr):
    pytest.importorskip("fbgemm_gpu")
    a, _ = trained(fused, lr, epochs=2)
    b, _ = trained(pure, lr, epochs=2)
    moved = sum((t - t0).abs().max().item() for t, t0 in zip(b.embedding.tables, trained(pure, lr, epochs=0)[0].embedding.tables))
    assert moved > 1e-3  # the comparison below is not between untrained tables
    for ta, tb in zip(a.embedding.tables, b.embedding.tables):
        torch.testing.assert_close(ta, tb, atol=1e-5, rtol=1e-4)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4, msg=name)


def test_fbgemm_rowwise_accumulator_is_the_pure_optimizers_state():
    pytest.importorskip("fbgemm_gpu")
    _, ta = trained("fbgemm-rowwise-adagrad", 0.05)
    _, tb = trained("rowwise-adagrad", 0.05)
    (pa, sa), = ta.optimizers[1].state.items()
    (pb, sb), = tb.optimizers[1].state.items()
    torch.testing.assert_close(sa["sum"], sb["sum"], atol=1e-7, rtol=1e-4)


def test_training_lookups_through_the_kernel_return_the_tables_rows():
    pytest.importorskip("fbgemm_gpu")
    model, trainer = trained("fbgemm-rowwise-adagrad", 0.05, model="deepfm")
    emb = model.embedding
    ids = torch.from_numpy(trainer.data.split("val").ids[:64])
    fields = list(range(len(emb.fields)))
    emb.train()
    fused = emb.lookup_fields(ids, fields)
    emb.eval()
    plain = emb.lookup_fields(ids, fields)
    for f, p in zip(fused, plain):
        torch.testing.assert_close(f.detach(), p)
    assert emb.tables[0].grad is None  # the kernel, not a sparse gradient, updated the table


def test_the_embedding_parameter_is_the_kernels_weight_storage():
    pytest.importorskip("fbgemm_gpu")
    model, trainer = trained("fbgemm-sgd", 0.5)
    before = model.embedding.state_dict()["tables.0"].clone()
    model.embedding.load_state_dict({**model.embedding.state_dict(), "tables.0": torch.zeros_like(before)})
    kernel = trainer.optimizers[1].kernels[0]
    assert kernel.weights_host.data_ptr() == model.embedding.tables[0].data_ptr() and not kernel.weights_host.any()


def test_a_changed_learning_rate_reaches_the_kernels_before_the_next_backward():
    pytest.importorskip("fbgemm_gpu")
    _, trainer = trained("fbgemm-rowwise-adagrad", 0.05)
    opt = trainer.optimizers[1]
    opt.param_groups[0]["lr"] *= 0.5  # what --lr-decay does between epochs
    opt.zero_grad()
    assert abs(opt.kernels[0].get_learning_rate() - 0.025) < 1e-7


def test_reset_state_zeroes_the_kernels_own_accumulator():
    pytest.importorskip("fbgemm_gpu")
    model, trainer = trained("fbgemm-rowwise-adagrad", 0.05)
    table, kernel = model.embedding.tables[0], trainer.optimizers[1].kernels[0]
    assert kernel.momentum1_host[:5].any()
    where = torch.zeros(table.shape[0], dtype=torch.bool)
    where[:5] = True
    StepContext(1, 1, trainer.optimizers).reset_state(table, where)
    assert not kernel.momentum1_host[:5].any() and kernel.momentum1_host[5:].any()


def test_a_copy_of_the_embedding_leaves_the_kernels_behind():
    pytest.importorskip("fbgemm_gpu")
    model, _ = trained("fbgemm-sgd", 0.5)
    copy_ = copy.deepcopy(model.embedding)
    assert copy_.fused_gathers is None and model.embedding.fused_gathers is not None
    assert copy_.tables[0].data_ptr() != model.embedding.tables[0].data_ptr()


def test_resume_with_fbgemm_rowwise_adagrad_ends_like_an_uninterrupted_run(tmp_path):
    pytest.importorskip("fbgemm_gpu")
    config = RunConfig("fm", EmbeddingConfig(dim=8), train=replace(FAST, epochs=3, table_optimizer="fbgemm-rowwise-adagrad", table_lr=0.05))
    straight, resumed = straight_and_resumed(config, tmp_path, at_step=15)
    assert resumed["metrics"] == straight["metrics"]


def test_cli_train_with_fbgemm_rowwise_adagrad_writes_results(tmp_path):
    pytest.importorskip("fbgemm_gpu")
    argv = ["train", "--synthetic-rows", "600", "--model", "deepfm", "--dim", "8", "--epochs", "2", "--table-optimizer",
            "fbgemm-rowwise-adagrad", "--table-lr", "0.05", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["embedding"]["method"] == "full"
    model, _ = build_model(load_tiny(), RunConfig("fm", EmbeddingConfig(dim=8), train=FAST))
    assert state_bytes("fbgemm-rowwise-adagrad", model.embedding.sparse_parameters()) == state_bytes("rowwise-adagrad", model.embedding.sparse_parameters())


def test_methods_other_than_full_are_a_one_line_config_error():
    model, d = build_model(load_tiny(), RunConfig("fm", EmbeddingConfig("hash", dim=8, budget_bytes=20_000), train=FAST))
    with pytest.raises(ConfigError, match="only the `full` method's tables, not 'hash'"):
        Trainer(model, d, replace(FAST, table_optimizer="fbgemm-rowwise-adagrad"))


def test_widths_fbgemm_cannot_hold_are_a_config_error():
    model, d = build_model(load_tiny(), RunConfig("fm", EmbeddingConfig(dim=6), train=FAST))
    with pytest.raises(ConfigError, match="multiples of 4"):
        Trainer(model, d, replace(FAST, table_optimizer="fbgemm-sgd"))


def test_without_fbgemm_the_cli_names_the_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fbgemm_gpu", None)  # import fails as if not installed
    code = main(["train", "--synthetic-rows", "300", "--table-optimizer", "fbgemm-rowwise-adagrad", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "fbgemm_gpu" in err and 'pip install "embslim[fbgemm]"' in err
