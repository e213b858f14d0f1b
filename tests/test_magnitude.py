"""Pruned tables: sparse serving forms with exact bytes, and gradual magnitude pruning to a byte budget."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import load_tiny, straight_and_resumed
from embslim.cli import main
from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding, load_artifact
from embslim.embeddings.base import StepContext
from embslim.embeddings.magnitude import MagnitudeEmbedding, MagnitudeSettings
from embslim.embeddings.sparse_storage import SparseRows, form_bytes, kept_columns, kept_count, mask_bytes
from embslim.errors import BudgetError
from embslim.train.run import RunConfig, build_model, train_model
from embslim.train.trainer import TrainConfig


def fields(cards=(400, 300, 20)):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


@pytest.mark.parametrize("density,form", [(1.0, "dense"), (0.4, "bitmask"), (0.04, "csr"), (0.0, "dense")])
def test_pruned_table_is_stored_in_its_cheapest_form_and_serves_the_kept_entries(density, form):
    gen = torch.Generator().manual_seed(0)
    weight, mask = torch.randn(203, 16, generator=gen), torch.rand(203, 16, generator=gen) < density
    rows = SparseRows.from_dense(weight, mask)
    assert rows.form == form
    ids = torch.cat([torch.arange(203), torch.randint(0, 203, (40,), generator=gen)]).reshape(-1, 3)
    assert torch.equal(rows.lookup(ids), (weight * mask)[ids])
    kept_columns = int(mask.any(0).sum())
    assert rows.nbytes() == mask_bytes(mask) == min(form_bytes(f, 203, 16, int(mask.sum()), kept_columns) for f in ("dense", "bitmask", "csr"))


@pytest.mark.parametrize("shape", [(203, 16), (0, 8), (5, 3)])
def test_kept_counts_match_their_definitions_on_masks_with_empty_columns(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3
    if shape[0]:
        mask[:, 1] = False
    assert kept_count(mask) == int(mask.sum())
    assert kept_columns(mask) == int(mask.any(dim=0).sum())
    assert kept_columns(mask[:, ::2]) == int(mask[:, ::2].any(dim=0).sum())  # a strided view counts alike
    assert kept_columns(mask, probe_rows=2) == int(mask.any(dim=0).sum())  # beyond the probed rows too


def test_table_with_whole_columns_pruned_stores_only_the_kept_columns():
    weight, mask = torch.randn(100, 8), torch.zeros(100, 8, dtype=torch.bool)
    mask[:, [1, 5]] = True
    rows = SparseRows.from_dense(weight, mask)
    assert rows.form == "dense" and rows.tensors["values"].shape == (100, 2)
    assert torch.equal(rows.to_dense(), weight * mask)


def test_sparse_forms_pay_for_their_indices():
    blocks = -(-100 // 16) + 1
    assert form_bytes("csr", rows=100, width=16, nnz=50, kept_columns=16) == 50 * 4 + 50 * 1 + 100 * 1 + blocks * 4
    assert form_bytes("bitmask", rows=100, width=16, nnz=50, kept_columns=16) == 50 * 4 + 100 * 2 + blocks * 4


def finished(emb: MagnitudeEmbedding, steps: int = 100) -> MagnitudeEmbedding:
    for step in range(1, steps + 1):
        emb.on_step_end(StepContext(step, steps))
    return emb


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.1, 0.05])
def test_last_pruning_event_fits_the_budget_and_leaves_little_of_it_unused(fraction):
    specs = fields()
    budget = int(fraction * sum(f.cardinality for f in specs) * 16 * 4)
    torch.manual_seed(0)
    emb = finished(create_embedding(specs, EmbeddingConfig("magnitude", dim=16, budget_bytes=budget)))
    assert emb.size_is_final() and 0.98 * budget <= emb.memory_bytes() <= budget


def test_schedule_prunes_cubically_from_everything_to_the_target():
    emb = MagnitudeEmbedding(fields(), 16, MagnitudeSettings(events=10), budget_bytes=20_000)
    keeps = [emb.keep_at(e) for e in range(11)]
    assert keeps[0] == emb.total_entries() and keeps[-1] == emb.target_keep
    drops = np.diff(keeps)
    assert (drops < 0).all() and (np.diff(drops) > 0).all()  # the largest cuts come first


def test_events_happen_between_start_and_end_of_the_planned_steps():
    emb = MagnitudeEmbedding(fields(), 16, MagnitudeSettings(start=0.2, end=0.6, events=4), budget_bytes=20_000)
    kept, final = [], []
    for step in range(1, 101):
        emb.on_step_end(StepContext(step, 100))
        kept.append(emb.kept())
        final.append(emb.size_is_final())
    assert kept[28] == emb.total_entries() and kept[29] < emb.total_entries()  # first event after step 30
    assert not any(final[:59]) and all(final[59:]) and len(set(kept[59:])) == 1  # last event after step 60


def test_pruned_entries_stay_zero_while_training():
    data = load_tiny()
    config = RunConfig("deepfm", EmbeddingConfig("magnitude", dim=8, options={"density": 0.3, "end": 0.5}),
                       train=TrainConfig(epochs=2, batch_size=256, progress=False))
    model, d = build_model(data, config)
    train_model(model, d, config)
    emb = model.embedding
    assert all(torch.equal(t.detach()[~m], torch.zeros(int((~m).sum()))) for t, m in zip(emb.tables, emb.masks()))
    assert emb.kept() == round(0.3 * emb.total_entries())


def test_pruned_model_exports_the_bytes_it_counts_and_serves_the_same_vectors(tmp_path):
    specs = fields()
    emb = finished(create_embedding(specs, EmbeddingConfig("magnitude", dim=16, budget_bytes=30_000)))
    emb.export(tmp_path / "emb.safetensors")
    with safe_open(str(tmp_path / "emb.safetensors"), framework="pt") as fh:
        stored = sum(fh.get_tensor(k).numel() * fh.get_tensor(k).element_size() for k in fh.keys())
    served = load_artifact(tmp_path / "emb.safetensors")
    assert stored == emb.memory_bytes() == served.memory_bytes()
    ids = torch.randint(0, 20, (32,))
    assert all(torch.equal(emb.lookup(i, ids), served.lookup(i, ids)) for i in range(3))


def test_budget_below_the_sparse_index_is_a_budget_error():
    with pytest.raises(BudgetError, match="holds no entry"):
        create_embedding(fields(), EmbeddingConfig("magnitude", dim=16, budget_bytes=500))


def test_resume_after_interruption_mid_schedule_ends_like_an_uninterrupted_run(tmp_path):
    config = RunConfig("deepfm", EmbeddingConfig("magnitude", dim=8, options={"density": 0.3, "end": 0.6}),
                       train=TrainConfig(epochs=3, batch_size=256, patience=5, progress=False, seed=2))
    straight, resumed = straight_and_resumed(config, tmp_path, at_step=12)
    assert resumed["metrics"] == straight["metrics"] and resumed["embedding"]["bytes"] == straight["embedding"]["bytes"]


def test_cli_trains_magnitude_within_the_budget(tmp_path):
    assert main(["train", "--synthetic-rows", "3000", "--epochs", "2", "--quiet", "--embedding", "magnitude", "--dim", "8",
                 "--budget", "0.3", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["embedding"]["bytes"] <= results["config"]["embedding"]["budget_bytes"]


def test_a_magnitude_run_slices_to_a_stricter_threshold_within_the_budget(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--synthetic-rows", "3000", "--epochs", "2", "--quiet", "--embedding", "magnitude", "--dim", "8",
                 "--budget", "0.5", "--out", str(run)]) == 0
    source = json.loads((run / "results.json").read_text())
    for budget in ("0.3", "0.1"):
        assert main(["slice", str(run), "--budget", budget, "--out", str(tmp_path / budget), "--quiet"]) == 0
        sliced = json.loads((tmp_path / budget / "results.json").read_text())
        assert sliced["embedding"]["bytes"] <= sliced["slice"]["budget_bytes"] < source["embedding"]["bytes"]
        assert sliced["slice"]["choice"]["kept_entries"] < sliced["slice"]["choice"]["source_entries"]
        served = load_artifact(tmp_path / budget / "embedding.safetensors")
        assert served.memory_bytes() == sliced["embedding"]["bytes"]
