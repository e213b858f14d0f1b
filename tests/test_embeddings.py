"""The embedding interface: shapes, exact bytes, budgets honoured, artifacts that serve the same vectors."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, SparseBatch, create_embedding, list_embeddings, load_artifact
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


LAYOUT = {"width": 5, "fields": {"f0": {"blocks": [{"rows": [0, 3], "dims": [0, 4]}, {"rows": [3, 10], "dims": [2]}]},
                                  "f1": {"blocks": [{"rows": [0, 7], "dims": []}]},
                                  "f2": {"blocks": [{"rows": [0, 5], "dims": [0, 1, 2, 3, 4]}]},
                                  "tags": {"blocks": [{"rows": [0, 1], "dims": [1]}, {"rows": [1, 4], "dims": [3, 0]}]}}}
EXAMPLES = {
    "full": EmbeddingConfig(dims={"f1": 2}, dim=5),
    "dnis": EmbeddingConfig("dnis", dim=5, options={"blocks": 2}),
    "blockwise": EmbeddingConfig("blockwise", dim=5, options={"layout": LAYOUT}),
    "mde": EmbeddingConfig("mde", dim=5, budget_bytes=600, options={"blocks": 2}),
}


def test_every_registered_method_has_an_example_config():
    assert sorted(EXAMPLES) == list_embeddings()


@pytest.mark.parametrize("method", list_embeddings())
def test_exported_artifact_serves_the_same_vectors(method, tmp_path):
    fields = make_fields()
    emb = create_embedding(fields, EXAMPLES[method])
    emb.export(tmp_path / "emb.safetensors")
    served = load_artifact(tmp_path / "emb.safetensors")
    batch = make_batch(fields, seed=4)
    for a, b in zip(emb(batch), served(batch)):
        assert torch.equal(a, b)
    assert served.memory_bytes() == emb.memory_bytes()


@pytest.mark.parametrize("method", list_embeddings())
def test_tables_receive_sparse_gradients(method):
    fields = make_fields()
    emb = create_embedding(fields, EXAMPLES[method])
    sum(v.sum() for v in emb(make_batch(fields))).backward()
    assert all(p.grad.is_sparse for p in emb.sparse_parameters())


@pytest.mark.parametrize("method", list_embeddings())
def test_memory_bytes_equals_parameters_plus_buffers(method):
    emb = create_embedding(make_fields(), EXAMPLES[method])
    weights = sum(p.numel() * p.element_size() for p in emb.parameters())
    buffers = sum(b.numel() * b.element_size() for b in emb.buffers())
    assert emb.memory_bytes() <= weights + buffers
    assert emb.memory_bytes() >= weights + buffers - 4  # blockwise may hold one placeholder value when nothing is kept
