"""TT-Rec tensor-train tables: mixed-radix rows, the core contraction, scale of the init, and the budgeted rank."""
import math

import numpy as np
import pytest
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding
from embslim.embeddings.tt import TTEmbedding, TTSettings, core_shapes, dim_factors, ranks_bytes, row_factors, tt_layout
from embslim.errors import BudgetError


def fields_of(*cards):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


@pytest.mark.parametrize("n", [1, 7, 8, 1682, 100_000])
def test_tt_row_radices_cover_every_id(n):
    n1, n2, n3 = row_factors(n)
    assert n1 * n2 * n3 >= n and n1 == n2 == math.ceil(round(n ** (1 / 3), 9))


@pytest.mark.parametrize("d,expected", [(16, (2, 2, 4)), (64, (4, 4, 4)), (5, (1, 1, 5)), (1, (1, 1, 1))])
def test_tt_dim_factors_multiply_to_the_width(d, expected):
    assert dim_factors(d) == expected and math.prod(dim_factors(d)) == d


def test_tt_row_is_the_contraction_of_its_three_core_slices():
    emb = TTEmbedding(fields_of(1000), 16, [3], TTSettings(), init_std=0.1)
    g1, g2, g3 = (c.detach() for c in emb.cores)
    n2, n3 = g2.shape[0], g3.shape[0]
    x = 777
    i1, i2, i3 = x // (n2 * n3), (x // n3) % n2, x % n3
    expected = torch.einsum("ar,rbs,sc->abc", g1[i1], g2[i2], g3[i3]).reshape(16)
    assert torch.allclose(emb.lookup(0, torch.tensor([x]))[0], expected, atol=1e-6)


@pytest.mark.parametrize("batch", [5, 400], ids=["distinct-prefixes", "all-prefixes"])
def test_tt_batched_rows_and_gradients_equal_the_per_id_contraction(batch):
    emb = TTEmbedding(fields_of(1000), 16, [3], TTSettings(), init_std=0.1)  # 10 x 10 prefixes
    ids = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0))
    g1, g2, g3 = emb.cores
    n2, n3 = g2.shape[0], g3.shape[0]
    expected = torch.stack([torch.einsum("ar,rbs,sc->abc", g1[x // (n2 * n3)], g2[(x // n3) % n2], g3[x % n3]).reshape(16)
                            for x in ids.tolist()])
    got = emb.lookup(0, ids)
    assert torch.allclose(got, expected, atol=1e-6)
    weights = torch.randn(batch, 16)
    want = torch.autograd.grad((expected * weights).sum(), list(emb.cores))
    have = torch.autograd.grad((got * weights).sum(), list(emb.cores))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(have, want))


def test_tt_init_gives_rows_the_std_of_a_plain_init():
    emb = create_embedding(fields_of(20_000), EmbeddingConfig("tt", dim=16, init_std=0.01, options={"rank": 16}))
    assert 0.008 < emb.field_table(0).std().item() < 0.012


def test_tt_rank_is_the_largest_uniform_one_that_fits_then_the_largest_fields_take_one_more():
    fields = fields_of(50_000, 20_000, 30)
    budget = 104_000
    emb = create_embedding(fields, EmbeddingConfig("tt", dim=16, budget_bytes=budget))
    low = min(r for r in emb.ranks if r)
    assert tt_layout(fields, 16, low)[1] <= budget < tt_layout(fields, 16, low + 1)[1]
    assert emb.ranks[:2] == [low + 1, low] and emb.memory_bytes() == ranks_bytes(fields, 16, emb.ranks) <= budget
    assert budget < ranks_bytes(fields, 16, [low + 1, low + 1, emb.ranks[2]])


def test_tt_small_fields_stay_plain_tables():
    emb = create_embedding(fields_of(50_000, 30), EmbeddingConfig("tt", dim=16, options={"rank": 8}))
    assert emb.ranks == [8, 0] and emb.table.shape == (30, 16)
    assert emb.memory_bytes() == 4 * sum(math.prod(s) for s in core_shapes(50_000, 16, 8)) + 4 * 30 * 16 + 8


def test_tt_budget_below_rank_one_is_a_budget_error():
    with pytest.raises(BudgetError):
        create_embedding(fields_of(50_000), EmbeddingConfig("tt", dim=16, budget_bytes=100))


def test_tt_cores_train_to_fit_targets():
    emb = TTEmbedding(fields_of(500), 4, [4], TTSettings(), init_std=0.1)
    target = torch.randn(500, 4) * 0.1
    opt = torch.optim.Adam(emb.parameters(), lr=0.02)
    ids = torch.arange(500)
    start = (emb.lookup(0, ids) - target).pow(2).mean().item()
    for _ in range(40):
        loss = (emb.lookup(0, ids) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * start
