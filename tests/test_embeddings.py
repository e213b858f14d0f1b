"""The embedding interface: shapes, exact bytes, budgets honoured, artifacts that serve the same vectors."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embslim.data.fields import FieldSpec
from safetensors import safe_open

from embslim.embeddings import EmbeddingConfig, SparseBatch, create_embedding, list_embeddings, load_artifact, method_info
from embslim.embeddings.base import StepContext
from embslim.embeddings.full import full_bytes, uniform_dim_for_budget
from embslim.errors import ConfigError


def make_fields(cards=(10, 7, 5), bag_card=4):
    fields = [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]
    fields.append(FieldSpec("tags", bag_card, np.ones(bag_card, dtype=np.int64), multivalued=True, pooling="mean"))
    return fields


def make_batch(fields, n=6, seed=0):
    rng = np.random.default_rng(seed)
    single = [f for f in fields if not f.multivalued]
    ids = torch.from_numpy(np.stack([rng.integers(0, f.cardinality, n) for f in single], axis=1))
    values = torch.tensor([1, 2, 3, 0, 2], dtype=torch.int64)
    offsets = torch.tensor([0, 2, 2, 3, 4, 4, 5])
    return SparseBatch(ids, {"tags": (values, offsets)}, torch.zeros(n))


def test_full_returns_one_vector_per_field_at_its_width():
    fields = make_fields()
    emb = create_embedding(fields, EmbeddingConfig(dims={"f0": 8, "tags": 2}, dim=4))
    out = emb(make_batch(fields))
    assert [tuple(v.shape) for v in out] == [(6, 8), (6, 4), (6, 4), (6, 2)]


def test_bag_field_is_the_mean_of_its_rows_and_empty_bags_are_zero():
    fields = make_fields()
    emb = create_embedding(fields, EmbeddingConfig(dim=3))
    out = emb(make_batch(fields))[3]
    table = emb.tables[0].detach()
    base = sum(f.cardinality for f in fields[:3])
    assert torch.allclose(out[0], (table[base + 1] + table[base + 2]) / 2)
    assert torch.equal(out[1], torch.zeros(3))


def test_memory_bytes_counts_weights_and_offsets_exactly():
    fields = make_fields()
    emb = create_embedding(fields, EmbeddingConfig(dims={"f0": 8}, dim=4))
    rows4 = 7 + 5 + 4
    assert emb.memory_bytes() == (10 * 8 + rows4 * 4) * 4 + 8 * 4
    assert emb.memory_bytes() == full_bytes(fields, emb.dims)
    assert emb.memory_bytes("train") == 3 * (10 * 8 + rows4 * 4) * 4 + 8 * 4


@settings(max_examples=60, deadline=None)
@given(cards=st.lists(st.integers(1, 5000), min_size=1, max_size=12), budget=st.integers(1_000, 5_000_000))
def test_budget_is_never_exceeded_and_the_next_dimension_would_exceed_it(cards, budget):
    fields = [FieldSpec(f"f{i}", c, np.zeros(c, dtype=np.int64)) for i, c in enumerate(cards)]
    try:
        d = uniform_dim_for_budget(fields, budget)
    except ConfigError:
        assert full_bytes(fields, [1] * len(fields)) > budget
        return
    assert full_bytes(fields, [d] * len(fields)) <= budget < full_bytes(fields, [d + 1] * len(fields))


def test_built_module_reports_the_bytes_the_budget_allowed():
    fields = make_fields((1000, 300))
    emb = create_embedding(fields, EmbeddingConfig(budget_bytes=50_000))
    assert emb.memory_bytes() <= 50_000 and emb.memory_bytes() == full_bytes(fields, emb.dims)


def test_unknown_method_and_unknown_field_are_config_errors():
    with pytest.raises(ConfigError, match="unknown embedding method"):
        create_embedding(make_fields(), EmbeddingConfig(method="nope"))
    with pytest.raises(ConfigError, match="unknown fields"):
        create_embedding(make_fields(), EmbeddingConfig(dims={"zz": 3}))


CARDS, BAG = (300, 200, 100), 50
LAYOUT = {"width": 5, "fields": {"f0": {"blocks": [{"rows": [0, 30], "dims": [0, 4]}, {"rows": [30, 300], "dims": [2]}]},
                                  "f1": {"blocks": [{"rows": [0, 200], "dims": []}]},
                                  "f2": {"blocks": [{"rows": [0, 100], "dims": [0, 1, 2, 3, 4]}]},
                                  "tags": {"blocks": [{"rows": [0, 1], "dims": [1]}, {"rows": [1, 50], "dims": [3, 0]}]}}}
EXAMPLES = {
    "full": EmbeddingConfig(dims={"f1": 2}, dim=5),
    "dnis": EmbeddingConfig("dnis", dim=5, options={"blocks": 2}),
    "blockwise": EmbeddingConfig("blockwise", dim=5, options={"layout": LAYOUT}),
}
BUDGET = 8_000  # bytes; the full tables of make_fields(CARDS, BAG) at dim 5 take 13,032


def example(method: str) -> EmbeddingConfig:
    """A config every method can be built from: its own example, or a budget it fits."""
    if method in EXAMPLES:
        return EXAMPLES[method]
    assert method_info(method).budgeted, f"{method} is not built from a budget: add an example config here"
    return EmbeddingConfig(method, dim=5, budget_bytes=BUDGET)


@pytest.mark.parametrize("method", [m for m in list_embeddings() if method_info(m).budgeted])
def test_every_budgeted_method_fits_a_budget_it_can_reach(method):
    emb = create_embedding(make_fields(CARDS, BAG), EmbeddingConfig(method, dim=5, budget_bytes=BUDGET))
    emb.on_step_end(StepContext(step=1, total_steps=1))  # a method that learns its size reaches it by the planned end
    assert emb.size_is_final()
    assert 0 < emb.memory_bytes("serve") <= BUDGET


@pytest.mark.parametrize("method", list_embeddings())
def test_exported_artifact_serves_the_same_vectors(method, tmp_path):
    fields = make_fields(CARDS, BAG)
    emb = create_embedding(fields, example(method))
    emb.export(tmp_path / "emb.safetensors")
    served = load_artifact(tmp_path / "emb.safetensors")
    batch = make_batch(fields, seed=4)
    for a, b in zip(emb(batch), served(batch)):
        assert torch.equal(a, b)
    assert served.memory_bytes() == emb.memory_bytes()


@pytest.mark.parametrize("method", list_embeddings())
def test_exported_tensor_bytes_equal_serving_bytes(method, tmp_path):
    emb = create_embedding(make_fields(CARDS, BAG), example(method))
    emb.export(tmp_path / "emb.safetensors")
    with safe_open(str(tmp_path / "emb.safetensors"), framework="pt") as fh:
        stored = sum(packed_bytes(fh.get_tensor(k)) for k in fh.keys())
    assert stored == emb.memory_bytes("serve")


def packed_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@pytest.mark.parametrize("method", list_embeddings())
def test_unknown_setting_is_a_one_line_config_error_naming_it(method):
    config = EmbeddingConfig(method, dim=5, budget_bytes=BUDGET, options={"no_such_setting": "1"})
    with pytest.raises(ConfigError, match="no_such_setting") as err:
        create_embedding(make_fields(CARDS, BAG), config)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", list_embeddings())
def test_unpooled_and_whole_table_lookups_match_the_pooled_ones(method):
    fields = make_fields(CARDS, BAG)
    emb = create_embedding(fields, example(method))
    batch = make_batch(fields, seed=2)
    pooled = emb(batch)
    padded = torch.tensor([[1, 2], [-1, -1], [3, -1], [0, -1], [-1, -1], [2, -1]])
    seq = emb.lookup_sequence(3, padded)
    assert seq.shape == (6, 2, emb.dims[3]) and torch.equal(seq[1], torch.zeros_like(seq[1]))
    assert torch.allclose(seq.sum(1) / (padded >= 0).sum(1, keepdim=True).clamp(min=1), pooled[3], atol=1e-6)
    table = emb.field_table(0)
    assert table.shape == (CARDS[0], emb.dims[0]) and torch.allclose(table[batch.ids[:, 0]], pooled[0])


@pytest.mark.parametrize("method", list_embeddings())
def test_tables_receive_sparse_gradients(method):
    fields = make_fields(CARDS, BAG)
    emb = create_embedding(fields, example(method))
    loss = sum(v.sum() for v in emb(make_batch(fields)))
    if emb.sparse_parameters():
        loss.backward()
    assert all(p.grad.is_sparse for p in emb.sparse_parameters())


@pytest.mark.parametrize("method", list_embeddings())
def test_training_bytes_add_two_adam_copies_of_the_weights_and_the_methods_own_state(method):
    emb = create_embedding(make_fields(CARDS, BAG), example(method))
    assert emb.memory_bytes("train") - emb.memory_bytes("serve") == 2 * emb.weight_bytes() + emb.state_bytes()


@pytest.mark.parametrize("method", list_embeddings())
def test_the_batched_lookup_of_single_valued_fields_equals_each_fields_own_lookup(method):
    fields = make_fields(CARDS, BAG)
    emb = create_embedding(fields, example(method)).eval()
    ids = make_batch(fields, seed=5).ids
    single = [i for i, f in enumerate(fields) if not f.multivalued]
    with torch.no_grad():
        batched = emb.lookup_fields(ids, single)
        each = [emb.lookup(f, ids[:, j]) for j, f in enumerate(single)]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(batched, each))
