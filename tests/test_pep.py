"""PEP: soft thresholds learned while searching, a mask that fits the budget, a lottery-ticket retrain from the initial weights."""
import json

import numpy as np
import pytest
import torch

from conftest import Interrupt, load_tiny
from embslim.cli import main
from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding, load_artifact
from embslim.embeddings.base import StepContext
from embslim.embeddings.pep import PEPEmbedding, PEPSettings, soft_threshold, above_threshold
from embslim.errors import BudgetError, ConfigError
from embslim.train.run import RunConfig, build_model, run, train_model
from embslim.train.trainer import TrainConfig

CARDS = (400, 300, 20)
FULL_BYTES = sum(CARDS) * 16 * 4


def fields(cards=CARDS):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


def pep(budget: int | None = None, **settings) -> PEPEmbedding:
    torch.manual_seed(0)
    return PEPEmbedding(fields(), 16, PEPSettings(**settings), budget_bytes=budget)


def raise_thresholds(emb: PEPEmbedding, to: float) -> None:
    """Set every threshold to `to` (what training would do, reached at once)."""
    with torch.no_grad():
        emb.threshold.fill_((np.log(to / (1 - to)) - emb.settings.threshold_init) / emb.settings.threshold_lr)


def test_soft_threshold_passes_gradient_to_kept_entries_and_minus_their_sign_to_the_threshold():
    v = torch.tensor([-0.5, -0.05, 0.0, 0.05, 0.3], requires_grad=True)
    threshold = torch.tensor([0.1], requires_grad=True)
    soft_threshold(v, threshold).backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert torch.equal(v.grad, torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0])) and torch.allclose(threshold.grad, torch.tensor([1.0 - 5.0]))


def test_soft_threshold_zeroes_small_entries_and_shrinks_the_rest_toward_zero():
    v = torch.tensor([-0.5, -0.05, 0.0, 0.05, 0.3])
    assert torch.allclose(soft_threshold(v, torch.tensor(0.1)), torch.tensor([-0.4, 0.0, 0.0, 0.0, 0.2]))


def test_lookup_applies_each_fields_threshold_to_the_gathered_rows_while_searching():
    emb = pep(granularity="dimension")
    with torch.no_grad():
        emb.threshold[1].uniform_(0.5, 1.0)
    ids = torch.tensor([[0, 5], [7, 299]])
    expected = soft_threshold(emb.tables[1].detach()[ids], emb.thresholds()[1])
    assert torch.equal(emb.lookup(1, ids), expected)
    assert emb.threshold.shape == (3, 16) and pep().threshold.shape == (3, 1)


def test_search_ends_when_the_thresholds_mask_fits_the_budget():
    emb = pep(budget=FULL_BYTES // 4)
    emb.on_step_end(StepContext(1, 1000))
    assert not emb.size_is_final()  # nothing pruned yet at the initial threshold
    raise_thresholds(emb, 0.015)  # |v| ~ N(0, 0.01): keeps about 13% of the entries, some 17% of the bytes
    emb.on_step_end(StepContext(2, 1000))
    assert emb.size_is_final() and emb.reached_budget and not emb.cut_to_budget
    assert 0 < emb.memory_bytes() <= FULL_BYTES // 4


def test_retrain_starts_from_the_initial_weights_under_the_frozen_mask():
    emb = pep(budget=FULL_BYTES // 2)
    initial = [t.detach().clone() for t in emb.tables]
    with torch.no_grad():
        for t in emb.tables:
            t.mul_(3.0)  # stands for the search's training
    raise_thresholds(emb, 0.03)
    found = emb.soft_masks()
    emb.on_step_end(StepContext(1, 1000))
    assert all(torch.equal(m, f) for m, f in zip(emb.masks(), found))
    assert all(torch.equal(t.detach(), i * m) for t, i, m in zip(emb.tables, initial, emb.masks()))
    assert emb.lookup(0, torch.arange(5)).equal(emb.tables[0].detach()[:5])  # no threshold once retraining


def test_search_that_misses_the_budget_is_cut_to_it_by_magnitude_within_its_mask():
    emb = pep(budget=FULL_BYTES // 10)
    raise_thresholds(emb, 0.005)  # keeps most entries: far above the budget
    found = emb.soft_masks()
    emb.on_step_end(StepContext(10, 20))  # the planned search (half of 20 steps) is over
    assert emb.size_is_final() and emb.cut_to_budget and not emb.reached_budget
    assert 0.9 * FULL_BYTES // 10 <= emb.memory_bytes() <= FULL_BYTES // 10
    assert all(not (m & ~f).any() for m, f in zip(emb.masks(), found))


def test_search_that_misses_the_budget_can_keep_the_bytes_it_reached_and_says_so():
    emb = pep(budget=FULL_BYTES // 10, fit="reached")
    raise_thresholds(emb, 0.005)
    emb.on_step_end(StepContext(10, 20))
    assert emb.size_is_final() and emb.memory_bytes() > FULL_BYTES // 10
    assert f"ended at {emb.memory_bytes():,} bytes" in emb.note


def test_note_counts_non_zeros_and_the_bytes_with_the_index():
    emb = pep(budget=FULL_BYTES // 4)
    raise_thresholds(emb, 0.015)
    emb.on_step_end(StepContext(1, 1000))
    assert f"{emb.kept():,} non-zero of {emb.total_entries():,}" in emb.note and f"{emb.memory_bytes():,} bytes" in emb.note


def tiny_config(budget_fraction: float | None = 0.3, epochs: int = 4, **settings) -> RunConfig:
    return RunConfig("deepfm", EmbeddingConfig("pep", dim=8, options={"decay": 1.0, "threshold_init": -6.0, "threshold_lr": 200.0, **settings}),
                     train=TrainConfig(epochs=epochs, batch_size=256, patience=10, progress=False, seed=2))


def with_budget(config: RunConfig, data, fraction: float) -> RunConfig:
    model, d = build_model(data, config)
    budget = int(fraction * sum(f.cardinality for f in d.table.fields) * 8 * 4)
    return RunConfig(config.model, EmbeddingConfig("pep", dim=8, budget_bytes=budget, options=config.embedding.options), train=config.train)


def test_training_searches_to_the_budget_then_keeps_pruned_entries_zero():
    data = load_tiny()
    config = with_budget(tiny_config(), data, 0.3)
    model, d = build_model(data, config)
    train_model(model, d, config)
    emb = model.embedding
    assert emb.size_is_final() and emb.reached_budget and emb.memory_bytes() <= config.embedding.budget_bytes
    assert all(torch.equal(t.detach()[~m], torch.zeros(int((~m).sum()))) for t, m in zip(emb.tables, emb.masks()))


def test_rewind_restores_the_backbones_initial_weights_too():
    data = load_tiny()
    config = with_budget(tiny_config(), data, 0.3)
    model, d = build_model(data, config)
    initial = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    rewound = {}

    class Watch:
        def on_batch_end(self, trainer, step):
            if model.embedding.size_is_final() and not rewound:
                rewound.update({k: v.clone() for k, v in model.state_dict().items() if not k.startswith("embedding.")})
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(model, d, config, callbacks=[Watch()])
    assert rewound and all(torch.equal(rewound[k], initial[k]) for k in initial)


def test_retrained_model_exports_the_bytes_it_counts_and_serves_the_same_vectors(tmp_path):
    data = load_tiny()
    config = with_budget(tiny_config(epochs=3), data, 0.3)
    model, d = build_model(data, config)
    train_model(model, d, config)
    emb = model.embedding
    emb.export(tmp_path / "emb.safetensors")
    served = load_artifact(tmp_path / "emb.safetensors")
    assert served.memory_bytes() == emb.memory_bytes() <= config.embedding.budget_bytes
    ids = torch.arange(20)
    assert all(torch.equal(emb.lookup(i, ids), served.lookup(i, ids)) for i in range(len(emb.fields)))


@pytest.mark.parametrize("at_step", [5, 30])  # killed while searching, and while retraining
def test_resume_after_interruption_ends_like_an_uninterrupted_run(tmp_path, at_step):
    data = load_tiny()
    config = with_budget(tiny_config(), data, 0.3)
    straight = run(data, config, tmp_path / "a")
    model, d = build_model(data, config)
    with pytest.raises(KeyboardInterrupt):
        train_model(model, d, config, tmp_path / "b", callbacks=[Interrupt(at_step=at_step)])
    model, d = build_model(data, config)
    resumed = train_model(model, d, config, tmp_path / "b", resume=True)
    assert resumed["metrics"] == straight["metrics"] and resumed["embedding"] == straight["embedding"]


def test_bad_settings_and_budgets_are_one_line_errors():
    with pytest.raises(ConfigError, match="granularity"):
        create_embedding(fields(), EmbeddingConfig("pep", dim=16, budget_bytes=30_000, options={"granularity": "row"}))
    with pytest.raises(BudgetError, match="holds no entry"):
        create_embedding(fields(), EmbeddingConfig("pep", dim=16, budget_bytes=500))


def test_cli_trains_pep_within_the_budget(tmp_path):
    assert main(["train", "--synthetic-rows", "3000", "--epochs", "2", "--quiet", "--embedding", "pep", "--dim", "8",
                 "--budget", "0.3", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["embedding"]["bytes"] <= results["config"]["embedding"]["budget_bytes"]
    assert "non-zero" in results["embedding"]["note"]


@pytest.mark.parametrize("threshold", [torch.tensor([0.5]), torch.linspace(0.1, 1.0, 4)])
def test_the_chunked_threshold_mask_equals_the_whole_table_comparison(threshold):
    table = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    out = torch.empty(30, 4, dtype=torch.bool)
    above_threshold(table, threshold, out, chunk_rows=7)
    assert torch.equal(out, table.abs() > threshold)
