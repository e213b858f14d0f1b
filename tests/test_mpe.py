"""MPE: widths searched per frequency group, repaired to the budget, served as packed codes equal to the eval lookups."""
import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import load_tiny, straight_and_resumed
from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding, load_artifact
from embslim.embeddings.base import StepContext
from embslim.embeddings.mpe import choose_widths, pack_rows, unpack_rows
from embslim.errors import BudgetError
from embslim.train.run import RunConfig, fit
from embslim.train.trainer import TrainConfig

FAST = TrainConfig(epochs=3, batch_size=256, patience=5, progress=False, seed=5)


def fields_of(*cards, counts=None):
    return [FieldSpec(f"f{i}", c, np.arange(c, 0, -1) if counts is None else counts[i]) for i, c in enumerate(cards)]


def mpe(fields, budget, dim=8, **options):
    return create_embedding(fields, EmbeddingConfig("mpe", dim=dim, budget_bytes=budget, options=options))


def scramble(emb, seed=0):
    """Random search state: logits, steps and offset as training might leave them, widths repaired to the budget."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb.logits.copy_(torch.randn(emb.logits.shape, generator=gen))
        emb.weight.copy_(torch.randn(emb.weight.shape, generator=gen) * 0.1)
        emb.offset.copy_(torch.randn(emb.offset.shape, generator=gen) * 0.01)
    emb.repair()
    return emb


def stored_bytes(path):
    with safe_open(str(path), framework="pt") as fh:
        return sum(fh.get_tensor(k).numel() * fh.get_tensor(k).element_size() for k in fh.keys())


@pytest.mark.parametrize("budget", [1_500, 4_000, 12_000, 40_000])
def test_bytes_never_exceed_the_budget_whatever_the_search_wants(budget):
    emb = mpe(fields_of(900, 300, 40), budget)
    for seed in range(5):
        assert scramble(emb, seed).memory_bytes() <= budget


def test_repair_fits_every_budget_and_keeps_the_argmax_when_it_fits():
    rng = np.random.default_rng(0)
    rows = rng.integers(1, 50, 200)
    cost = rows[:, None] * np.array([0, 1, 2, 3, 4, 5, 6])[None, :] * 2.0
    order = np.arange(200, dtype=float)
    for _ in range(30):
        logits = rng.normal(size=(200, 7))
        available = int(rng.integers(0, cost[:, -1].sum()))
        widths = choose_widths(logits, cost, available, order)
        assert cost[np.arange(200), widths].sum() <= available
    argmax = logits.argmax(1)
    assert np.array_equal(choose_widths(logits, cost, int(cost[np.arange(200), argmax].sum()), order, fill=False), argmax)


def test_repair_spends_spare_bytes_when_filling():
    cost = np.array([[0.0, 10, 20], [0.0, 10, 20]])
    logits = np.array([[1.0, 0, 0], [1.0, 0, 0]])  # the search wants both groups dropped
    widths = choose_widths(logits, cost, 25, np.arange(2.0))
    assert cost[[0, 1], widths].sum() > 15 and cost[[0, 1], widths].sum() <= 25


def test_artifact_stores_exactly_the_counted_bytes_and_serves_the_eval_lookups(tmp_path):
    fields = fields_of(500, 120, 7)
    emb = scramble(mpe(fields, 1_200, dim=5)).eval()
    assert len(set(emb.widths.tolist())) > 2  # a real mix of widths, dropped groups included
    emb.export(tmp_path / "emb.safetensors")
    served = load_artifact(tmp_path / "emb.safetensors")
    assert stored_bytes(tmp_path / "emb.safetensors") == emb.memory_bytes() == served.memory_bytes()
    for f, field in enumerate(fields):
        ids = torch.arange(field.cardinality)
        assert torch.equal(served.lookup(f, ids), emb.lookup(f, ids))


def test_trained_model_exports_an_artifact_equal_to_its_eval_lookups(tmp_path):
    config = RunConfig("deepfm", EmbeddingConfig("mpe", dim=8, budget_bytes=800), train=FAST)
    model, _, results = fit(load_tiny(), config)
    emb = model.embedding.eval()
    emb.export(tmp_path / "emb.safetensors")
    served = load_artifact(tmp_path / "emb.safetensors")
    assert stored_bytes(tmp_path / "emb.safetensors") == results["embedding"]["bytes"] == served.memory_bytes() <= 800
    assert emb.size_is_final()
    for f, field in enumerate(emb.fields):
        ids = torch.arange(field.cardinality)
        assert torch.equal(served.lookup(f, ids), emb.lookup(f, ids))


@pytest.mark.parametrize("bits", range(1, 9))
def test_packed_codes_read_back_exactly_at_every_width(bits):
    codes = torch.randint(0, 2**bits, (6, 5))
    blob = pack_rows(codes, bits).reshape(-1)
    per_row = (5 * bits + 7) // 8
    read = unpack_rows(blob, torch.arange(6) * per_row, torch.full((6,), bits), 5)
    assert blob.numel() == 6 * per_row and torch.equal(read, (codes - 2 ** (bits - 1)).float())


def test_groups_follow_training_counts_and_a_remap_is_paid_for():
    counts = np.array([0, 1, 1, 50, 1, 1, 1, 1, 40, 1, 1, 1, 1, 1, 1, 1])  # frequent ids 3 and 8 are not first
    ranked = mpe(fields_of(16, counts=[counts]), 4_000, dim=4, min_group_rows=4)
    in_order = mpe(fields_of(16, counts=[np.r_[0, np.arange(15, 0, -1)]]), 4_000, dim=4, min_group_rows=4)
    first_group = ranked.group_of_row[ranked.rows_of(0, torch.tensor([3, 8]))]
    assert first_group.tolist() == [0, 0]
    assert ranked.fixed - in_order.fixed == 16 * 4  # one int32 rank per id


def test_field_counts_come_from_the_training_split_only():
    data = load_tiny()
    train = data.split("train")
    for j, field in enumerate(train.single_fields):
        assert np.array_equal(field.counts, np.bincount(train.ids[:, j], minlength=field.cardinality))


def test_widths_are_searched_then_frozen_and_only_then_is_the_size_final():
    emb = scramble(mpe(fields_of(300, 50), 3_000, search_fraction=0.5))
    emb.on_step_end(StepContext(3, 10))
    assert not emb.size_is_final()
    emb.on_step_end(StepContext(5, 10))
    frozen = emb.widths.clone()
    with torch.no_grad():
        emb.logits.neg_()
    emb.on_step_end(StepContext(6, 10))
    assert emb.size_is_final() and torch.equal(emb.widths, frozen) and emb.aux_loss() is None


def test_penalty_counts_expected_bytes_during_the_search():
    emb = mpe(fields_of(300, 50), 3_000)
    penalty = emb.aux_loss()
    penalty.backward()
    assert penalty > 0 and emb.logits.grad.abs().sum() > 0


def test_budget_below_the_index_is_a_one_line_budget_error():
    with pytest.raises(BudgetError, match="mpe") as err:
        mpe(fields_of(900, 300), 50)
    assert "\n" not in str(err.value)


def test_resume_after_interruption_ends_like_an_uninterrupted_run(tmp_path):
    config = RunConfig("deepfm", EmbeddingConfig("mpe", dim=8, budget_bytes=800, options={"search_fraction": 0.5}), train=FAST)
    straight, resumed = straight_and_resumed(config, tmp_path, at_step=12)
    assert resumed["metrics"] == straight["metrics"] and resumed["embedding"] == straight["embedding"]
