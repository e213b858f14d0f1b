"""Quotient-remainder embeddings: shared quotient rows, unique compositions, whole small fields, the budget search, init scale."""
import numpy as np
import pytest
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding
from embslim.embeddings.qr import QRSettings, field_collisions, qr_bytes
from embslim.errors import BudgetError, ConfigError


def fields_of(*cards):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


def build(cards, budget=None, **options):
    return create_embedding(fields_of(*cards), EmbeddingConfig("qr", dim=8, budget_bytes=budget, options=options))


def test_qr_rows_of_distinct_ids_in_one_quotient_share_the_quotient_vector():
    emb = build((1000,), collisions=10)
    with torch.no_grad():
        emb.remainder.fill_(1.0)
    table = emb.field_table(0)
    assert torch.equal(table[20], table[29]) and not torch.equal(table[29], table[30])


def test_qr_distinct_ids_get_distinct_vectors():
    for operation in ("mult", "add", "concat"):
        table = build((1000,), collisions=10, operation=operation).field_table(0)
        assert len(torch.unique(table, dim=0)) == 1000


def test_qr_fields_at_or_below_the_threshold_stay_whole():
    emb = build((200, 201, 5000), collisions=4)
    assert emb.collisions.tolist() == [0, 4, 4]
    assert emb.whole.shape[0] == 200 and emb.quotient.shape[0] == 51 + 1250 and emb.remainder.shape[0] == 8


def test_qr_collision_count_is_capped_where_more_sharing_would_grow_the_tables():
    assert field_collisions([400], 1000, 8, QRSettings()) == [20]


def test_qr_budget_search_takes_the_smallest_collision_count_that_fits():
    cards = [50, 3000, 9000]
    budget = 40_000
    emb = build(cards, budget)
    c = int(emb.collisions.max())
    assert emb.memory_bytes() <= budget
    assert qr_bytes(cards, field_collisions(cards, c - 1, 8, QRSettings()), 8, "mult") > budget


def test_qr_budget_below_the_smallest_tables_is_a_budget_error():
    with pytest.raises(BudgetError, match="qr"):
        build((300, 5000), 2_000)


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_qr_init_gives_composed_vectors_the_full_table_scale(operation):
    torch.manual_seed(0)
    table = build((40_000,), collisions=200, operation=operation).field_table(0)
    assert abs(table.std().item() / 0.01 - 1) < 0.1 and abs(table.mean().item()) < 1e-3


def test_qr_concat_joins_a_quotient_half_and_a_remainder_half():
    emb = build((1000,), collisions=10, operation="concat")
    assert emb.quotient.shape[1] == 4 and emb.remainder.shape[1] == 4
    ids = torch.tensor([37])
    assert torch.equal(emb.lookup(0, ids)[0], torch.cat([emb.quotient[3], emb.remainder[7]]).detach())


def test_qr_fewer_than_two_collisions_is_a_config_error():
    with pytest.raises(ConfigError, match="collisions"):
        build((1000,), collisions=1)
