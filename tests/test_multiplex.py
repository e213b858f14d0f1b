"""Unified Embedding (feature multiplexing): one shared table, salted chunk lookups per field."""
import numpy as np
import pytest
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding
from embslim.errors import BudgetError, ConfigError


def fields_of(*cards):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


def build(fields, budget=40_000, dim=8, **options):
    return create_embedding(fields, EmbeddingConfig("multiplex", dim=dim, budget_bytes=budget, options=options))


@pytest.mark.parametrize("chunk", [None, 4, 1])
def test_multiplex_fills_the_budget_within_one_percent_without_exceeding_it(chunk):
    emb = build(fields_of(5000, 3000, 100), budget=40_000, chunk=chunk)
    assert 0.99 * 40_000 <= emb.memory_bytes("serve") <= 40_000


def test_multiplex_bytes_do_not_depend_on_the_number_of_fields():
    few, many = build(fields_of(5000, 3000)), build(fields_of(*[5000] * 10))
    assert few.memory_bytes() == many.memory_bytes() and few.table.shape == many.table.shape


def test_multiplex_vector_is_the_concatenation_of_its_salted_chunk_buckets():
    emb = build(fields_of(1000, 1000), dim=12, chunk=4)
    ids = torch.tensor([0, 7, 999])
    buckets = emb.buckets_of(ids.unsqueeze(-1), [3, 4, 5])  # field 1's three lookups follow field 0's
    expected = torch.cat([emb.table[buckets[:, j]] for j in range(3)], dim=1)
    assert torch.equal(emb.lookup(1, ids), expected)


def test_multiplex_same_id_in_two_fields_reads_different_buckets():
    emb = build(fields_of(2000, 2000), budget=400_000)
    ids = torch.arange(2000)
    assert (emb.lookup(0, ids) != emb.lookup(1, ids)).any(1).float().mean() > 0.99


def test_multiplex_chunks_of_one_id_collide_independently():
    emb = build(fields_of(20_000), budget=32 * 4 * 1000 + 8, dim=64, chunk=32)  # 1000 buckets, two lookups per id
    assert emb.table.shape[0] == 1000
    buckets = emb.buckets_of(torch.arange(20_000).unsqueeze(-1), [0, 1])
    first = buckets[:, 0]
    same_first = first.unsqueeze(0) == first[:2000].unsqueeze(1)
    same_second = buckets[:, 1].unsqueeze(0) == buckets[:2000, 1].unsqueeze(1)
    pairs = same_first.sum() - 2000
    both = (same_first & same_second).sum() - 2000
    assert pairs > 10_000 and both < pairs * 0.01  # independent hashes: about 1 in 1000 first-chunk collisions repeats


def test_multiplex_per_field_widths_take_that_many_chunks():
    fields = fields_of(500, 500, 500)
    emb = create_embedding(fields, EmbeddingConfig("multiplex", dim=4, dims={"f0": 12}, budget_bytes=20_000))
    assert emb.chunk == 4 and emb.lookups == [3, 1, 1] and emb.dims == [12, 4, 4]


@pytest.mark.parametrize("chunk", [3, 0, -4])
def test_multiplex_chunk_that_does_not_divide_the_width_is_a_config_error(chunk):
    with pytest.raises(ConfigError, match=f"chunk {chunk} must divide"):
        build(fields_of(100), chunk=chunk)


def test_multiplex_budget_below_one_bucket_is_a_budget_error():
    with pytest.raises(BudgetError, match="below one bucket"):
        build(fields_of(100), budget=8 + 4 * 8 - 1)


def test_multiplex_starts_at_the_full_tables_scale():
    emb = build(fields_of(50_000), budget=400_000, dim=16)
    assert abs(emb.lookup(0, torch.arange(50_000)).std().item() - 0.01) < 0.001
