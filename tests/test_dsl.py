"""Dynamic sparse training (DSL): constant kept counts and bytes, magnitude drop, gradient regrowth, clean restarts."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import load_tiny, straight_and_resumed
from embslim.cli import main
from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding, load_artifact
from embslim.embeddings.base import StepContext
from embslim.embeddings.dsl import DSLEmbedding, DSLSettings, largest_first
from embslim.embeddings.sparse_storage import mask_bytes
from embslim.errors import BudgetError, ConfigError
from embslim.train.run import RunConfig, build_model, train_model
from embslim.train.trainer import TrainConfig


def fields(cards=(400, 300, 20)):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


def full_bytes(specs, width=16):
    return sum(f.cardinality for f in specs) * width * 4


def sparse_grads(emb: DSLEmbedding, gen: torch.Generator, rows: int = 30) -> None:
    """Give every table a sparse gradient on a few random rows, as a batch would."""
    for table in emb.tables:
        ids = torch.randint(0, table.shape[0], (rows,), generator=gen).unique()
        table.grad = torch.sparse_coo_tensor(ids.unsqueeze(0), torch.randn(len(ids), table.shape[1], generator=gen), table.shape,
                                             check_invariants=True)


def train_steps(emb: DSLEmbedding, steps: int, total: int, optimizer=None, check=None) -> None:
    """Run `steps` steps of the hooks with random sparse gradients (and a SparseAdam step when given)."""
    gen = torch.Generator().manual_seed(7)
    for step in range(steps):
        sparse_grads(emb, gen)
        ctx = StepContext(step, total, [optimizer] if optimizer else [])
        emb.before_optimizer_step(ctx)
        if optimizer:
            optimizer.step()
        emb.on_step_end(StepContext(step + 1, total, ctx.optimizers))
        if check:
            check(emb, step + 1)


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.1, 0.05])
def test_initial_masks_fit_the_budget_and_leave_little_of_it_unused(fraction):
    specs = fields()
    budget = int(fraction * full_bytes(specs))
    torch.manual_seed(0)
    emb = create_embedding(specs, EmbeddingConfig("dsl", dim=16, budget_bytes=budget))
    assert emb.size_is_final() and 0.98 * budget <= emb.memory_bytes() <= budget
    assert emb.memory_bytes() == sum(mask_bytes(m) for m in emb.masks())


def test_drop_and_regrow_keep_each_tables_count_and_the_bytes_within_budget():
    specs, budget = fields(), int(0.2 * full_bytes(fields()))
    torch.manual_seed(0)
    emb = DSLEmbedding(specs, 16, DSLSettings(interval=5, drop_fraction=0.5, stop=0.75), budget_bytes=budget)
    counts = [int(m.sum()) for m in emb.masks()]
    first = [m.clone() for m in emb.masks()]

    def check(e, step):
        assert [int(m.sum()) for m in e.masks()] == counts
        assert e.memory_bytes() <= budget

    train_steps(emb, 100, 100, check=check)
    assert emb.updates_done == 14  # after steps 5, 10, ..., 70: before 0.75 of the 100 planned
    assert all((a != b).any() for a, b in zip(first, emb.masks()))  # entries were exchanged in every table


def test_pruned_entries_stay_zero_and_regrown_ones_start_at_zero_with_zero_adam_moments():
    torch.manual_seed(1)
    emb = DSLEmbedding(fields(), 16, DSLSettings(interval=4, drop_fraction=0.3), budget_bytes=int(0.3 * full_bytes(fields())))
    adam = torch.optim.SparseAdam(list(emb.tables), lr=0.05)
    train_steps(emb, 7, 100, adam)  # Adam moments are non-zero on kept entries of touched rows
    before = [m.clone() for m in emb.masks()]
    gen = torch.Generator().manual_seed(3)
    sparse_grads(emb, gen)
    emb.before_optimizer_step(StepContext(7, 100, [adam]))
    adam.step()
    emb.on_step_end(StepContext(8, 100, [adam]))  # an update
    for table, old, new in zip(emb.tables, before, emb.masks()):
        grown = new & ~old
        assert grown.any()
        state = adam.state[table]
        assert torch.equal(table.detach()[grown], torch.zeros(int(grown.sum())))
        assert not state["exp_avg"][grown].any() and not state["exp_avg_sq"][grown].any()
        assert not table.detach()[~new].any()


def test_drop_removes_the_smallest_kept_entries_and_regrowth_takes_the_largest_accumulated_gradients():
    spec = [FieldSpec("f", 10, np.ones(10, dtype=np.int64))]
    emb = DSLEmbedding(spec, 4, DSLSettings(density=0.5, interval=1, stop=1.0))
    mask = emb.masks()[0]
    with torch.no_grad():
        emb.tables[0].copy_(torch.arange(1, 41, dtype=torch.float32).reshape(10, 4) * mask)
        emb.score_0.copy_(torch.arange(40, dtype=torch.float32).reshape(10, 4))
    kept, pruned = mask.view(-1).nonzero().flatten(), (~mask).view(-1).nonzero().flatten()
    emb.exchange(0.25)
    new = emb.masks()[0].view(-1)
    n = round(0.25 * len(kept))
    assert not new[kept[:n]].any() and new[kept[n:]].all()  # the n smallest kept (weights grow with index) dropped
    assert new[pruned[-n:]].all() and not new[pruned[:-n]].any()  # the n pruned with the largest scores grown
    assert not emb.score_0.any()


def test_exchange_that_would_widen_a_partial_dense_table_past_its_bytes_is_skipped():
    spec = [FieldSpec("two", 2, np.ones(2, dtype=np.int64))]
    emb = DSLEmbedding(spec, 16, DSLSettings(interval=1, stop=1.0))
    columns = torch.zeros(2, 16, dtype=torch.bool)
    columns[:, :3] = True  # 3 whole columns of 2 rows: 30 bytes dense, cheaper than any sparse form of 6 values
    with torch.no_grad():
        emb.tables[0].normal_()
    emb.apply_masks([columns])
    emb.table_bytes = [mask_bytes(columns)]
    with torch.no_grad():
        emb.score_0.copy_((~columns).float())  # regrowth would open new columns
    emb.exchange(0.5)
    assert torch.equal(emb.masks()[0], columns) and emb.memory_bytes() == 30


def test_drop_fraction_decays_on_a_cosine_and_updates_stop_at_the_set_fraction_of_training():
    emb = DSLEmbedding(fields(), 16, DSLSettings(interval=10, drop_fraction=0.4, stop=0.5), budget_bytes=20_000)
    assert emb.fraction_at(0, 200) == pytest.approx(0.4) and emb.fraction_at(50, 200) == pytest.approx(0.2)
    assert emb.fraction_at(100, 200) == pytest.approx(0.0, abs=1e-12)
    due = [s for s in range(1, 201) if emb.update_due(s, 200)]
    assert due == list(range(10, 100, 10))


def test_scores_accumulate_only_while_updates_remain():
    emb = DSLEmbedding(fields(), 16, DSLSettings(interval=10, stop=0.5), budget_bytes=20_000)
    gen = torch.Generator().manual_seed(0)
    sparse_grads(emb, gen)
    emb.before_optimizer_step(StepContext(85, 200))
    assert any(s.any() for s in emb.scores())
    for s in emb.scores():
        s.zero_()
    sparse_grads(emb, gen)
    emb.before_optimizer_step(StepContext(95, 200))  # the next update would be at step 100, the stop
    assert not any(s.any() for s in emb.scores())


def test_pruned_entries_stay_zero_while_training():
    data = load_tiny()
    config = RunConfig("deepfm", EmbeddingConfig("dsl", dim=8, options={"density": 0.3, "interval": 5}),
                       train=TrainConfig(epochs=2, batch_size=256, progress=False))
    model, d = build_model(data, config)
    kept = model.embedding.kept()
    train_model(model, d, config)
    emb = model.embedding
    assert emb.updates_done > 0 and emb.kept() == kept
    assert all(not t.detach()[~m].any() for t, m in zip(emb.tables, emb.masks()))


def test_trained_model_exports_the_bytes_it_counts_and_serves_the_same_vectors(tmp_path):
    torch.manual_seed(0)
    emb = create_embedding(fields(), EmbeddingConfig("dsl", dim=16, budget_bytes=30_000, options={"interval": 3}))
    train_steps(emb, 20, 30)
    emb.export(tmp_path / "emb.safetensors")
    with safe_open(str(tmp_path / "emb.safetensors"), framework="pt") as fh:
        stored = sum(fh.get_tensor(k).numel() * fh.get_tensor(k).element_size() for k in fh.keys())
    served = load_artifact(tmp_path / "emb.safetensors")
    assert stored == emb.memory_bytes() == served.memory_bytes() <= 30_000
    ids = torch.randint(0, 20, (32,))
    assert all(torch.equal(emb.lookup(i, ids), served.lookup(i, ids)) for i in range(3))


def test_training_bytes_count_the_gradient_scores():
    emb = DSLEmbedding(fields(), 16, DSLSettings(), budget_bytes=20_000)
    dense = full_bytes(fields())
    masks = dense // 4
    assert emb.memory_bytes("train") == 3 * dense + masks + dense


def test_budget_below_the_sparse_index_is_a_budget_error():
    with pytest.raises(BudgetError, match="holds no entry"):
        create_embedding(fields(), EmbeddingConfig("dsl", dim=16, budget_bytes=500))


@pytest.mark.parametrize("option", [{"interval": "0"}, {"drop_fraction": "1.5"}, {"stop": "-0.1"}, {"density": "0"}])
def test_settings_out_of_range_are_config_errors(option):
    with pytest.raises(ConfigError, match="dsl needs"):
        create_embedding(fields(), EmbeddingConfig("dsl", dim=16, budget_bytes=20_000, options=option))


def test_resume_after_interruption_mid_schedule_ends_like_an_uninterrupted_run(tmp_path):
    config = RunConfig("deepfm", EmbeddingConfig("dsl", dim=8, options={"density": 0.3, "interval": 4, "stop": 0.9}),
                       train=TrainConfig(epochs=3, batch_size=256, patience=5, progress=False, seed=2))
    straight, resumed = straight_and_resumed(config, tmp_path, at_step=14)
    assert resumed["metrics"] == straight["metrics"] and resumed["embedding"]["bytes"] == straight["embedding"]["bytes"]


def test_cli_trains_dsl_within_the_budget(tmp_path):
    assert main(["train", "--synthetic-rows", "3000", "--epochs", "2", "--quiet", "--embedding", "dsl", "--dim", "8",
                 "--budget", "0.3", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["embedding"]["bytes"] <= results["config"]["embedding"]["budget_bytes"]
    assert not math.isnan(results["metrics"]["test"]["auc"])


@pytest.mark.parametrize("n", [1, 5, 40, 120])
def test_regrowth_order_is_a_stable_descending_sort_without_sorting_the_zeros(n):
    gen = torch.Generator().manual_seed(3)
    values = torch.randint(0, 4, (200,), generator=gen).float() * (torch.rand(200, generator=gen) < 0.3)  # ties, many zeros
    values[torch.rand(200, generator=gen) < 0.4] = -1.0  # kept entries, never regrown
    assert torch.equal(largest_first(values, n), torch.argsort(values, descending=True, stable=True)[:n])
