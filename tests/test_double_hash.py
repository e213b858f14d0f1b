"""Frequency-based double hashing: own rows for hot ids, two summed bucket rows for cold ones, the budget split."""
import numpy as np
import pytest
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding
from embslim.errors import ConfigError


def build(cards, budget, dim=8, **options):
    fields = [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]
    return create_embedding(fields, EmbeddingConfig("double-hash", dim=dim, budget_bytes=budget, options=options))


def test_double_hash_hot_ids_get_their_own_row():
    emb = build((1000,), 4 * 8 * 200 + 40)
    k = int(emb.hot[0])
    assert k == 100 and torch.equal(emb.field_table(0)[:k], emb.table[:k].detach())


def test_double_hash_cold_ids_sum_two_bucket_rows():
    emb = build((1000,), 4 * 8 * 200 + 40)
    ids = torch.arange(100, 1000)
    first, second, cold = emb.rows_of(ids, 0)
    assert bool(cold.all()) and int(first.min()) >= 100 and int(second.max()) < 200 and bool((first != second).any())
    assert torch.allclose(emb.lookup(0, ids), (emb.table[first] + emb.table[second]).detach())


def test_double_hash_leaves_fewer_cold_ids_indistinguishable_than_one_hash():
    emb = build((5000,), 4 * 8 * 200 + 40, hot_fraction=0.0)
    first, second, _ = emb.rows_of(torch.arange(5000), 0)
    pairs = torch.stack([torch.minimum(first, second), torch.maximum(first, second)], 1)
    assert len(torch.unique(pairs, dim=0)) > 4 * len(torch.unique(first))


def test_double_hash_hot_fraction_splits_each_fields_rows():
    emb = build((1000, 1000), 4 * 8 * 400 + 80, hot_fraction=0.25)
    assert emb.hot.tolist() == [50, 50] and emb.buckets.tolist() == [150, 150]


def test_double_hash_field_that_fits_stays_whole_and_unhashed():
    emb = build((30, 5000), 4 * 8 * 400 + 80)
    assert emb.hot[0] == 30 and emb.buckets[0] == 0
    assert not bool(emb.rows_of(torch.arange(30), 0)[2].any())


def test_double_hash_fills_the_budget_within_one_percent_and_counts_five_ints_per_field():
    budget = 100_000
    emb = build((50, 3000, 9000), budget)
    assert 0.99 * budget <= emb.memory_bytes() <= budget and emb.index_bytes() == 3 * 5 * 8


def test_double_hash_cold_sums_start_at_the_hot_rows_scale():
    torch.manual_seed(0)
    emb = build((100_000,), 4 * 8 * 20_000 + 40)
    table = emb.field_table(0)
    hot, cold = table[:10_000].std().item(), table[10_000:].std().item()
    assert abs(hot / 0.01 - 1) < 0.05 and abs(cold / hot - 1) < 0.05


def test_double_hash_hot_fraction_outside_zero_one_is_a_config_error():
    with pytest.raises(ConfigError, match="hot_fraction"):
        build((1000,), 10_000, hot_fraction=1.5)


def test_double_hash_serves_without_gradients_exactly_what_it_trains_with():
    emb = build((1000, 50), 4 * 8 * 300 + 80)
    ids = torch.stack([torch.randint(0, 1000, (64,)), torch.randint(0, 50, (64,))], dim=1)
    with torch.no_grad():
        served = emb.lookup_fields(ids, [0, 1])
    trained = emb.lookup_fields(ids, [0, 1])
    assert trained[0].requires_grad and all(torch.equal(a, b.detach()) for a, b in zip(served, trained))


def test_double_hash_gradient_reaches_a_hot_ids_row_once_and_both_rows_of_a_cold_id():
    emb = build((1000,), 4 * 8 * 200 + 40)
    ids = torch.tensor([5, 500, 500, 731])  # one hot id, a cold one twice, another cold one
    upstream = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    (emb.lookup(0, ids) * upstream).sum().backward()
    first, second, cold = emb.rows_of(ids, 0)
    expected = torch.zeros_like(emb.table)
    expected.index_add_(0, first, upstream).index_add_(0, second, upstream * cold.unsqueeze(1))
    assert emb.table.grad.is_sparse and torch.allclose(emb.table.grad.to_dense(), expected)
