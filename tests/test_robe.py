"""ROBE: vectors read as signed blocks of Z consecutive elements of one shared array, at hashed offsets."""
import numpy as np
import pytest
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding
from embslim.errors import BudgetError, ConfigError


def fields_of(*cards):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


def build(fields, budget=40_000, dim=16, **options):
    return create_embedding(fields, EmbeddingConfig("robe", dim=dim, budget_bytes=budget, options=options))


@pytest.mark.parametrize("chunk", [32, 1])
def test_robe_fills_the_budget_within_one_percent_without_exceeding_it(chunk):
    emb = build(fields_of(5000, 3000, 100), budget=40_003, chunk=chunk)
    assert 0.99 * 40_003 <= emb.memory_bytes("serve") <= 40_003


def test_robe_vector_is_the_signed_array_elements_at_its_positions():
    emb = build(fields_of(1000, 1000))
    ids = torch.tensor([0, 5, 999])
    positions, signs = emb.offsets_and_signs(ids.unsqueeze(-1), [1])
    assert torch.equal(emb.lookup(1, ids), emb.array[positions[:, 0], 0] * signs[:, 0])


def test_robe_block_reads_consecutive_elements_and_wraps_at_the_end_of_the_array():
    emb = build(fields_of(2000), budget=8 + 4 * 40)  # 40 elements: most 16-element blocks wrap or overlap
    positions, _ = emb.offsets_and_signs(torch.arange(2000).unsqueeze(-1), [0])
    steps = (positions[..., 1:] - positions[..., :-1]).remainder(40)
    assert emb.array.shape[0] == 40 and positions.max() < 40 and torch.all(steps == 1)
    assert (positions[..., -1] < positions[..., 0]).any()


def test_robe_blocks_of_a_wide_vector_start_at_independent_offsets():
    emb = build(fields_of(2000), budget=400_000, dim=64, chunk=16)
    positions, _ = emb.offsets_and_signs(torch.arange(2000).unsqueeze(-1), [0])
    starts = positions[:, 0, ::16]
    assert torch.all((positions[:, 0, 1:16] - positions[:, 0, :15]).remainder(emb.array.shape[0]) == 1)
    assert ((starts[:, 1:] - starts[:, :-1]) == 16).float().mean() < 0.01


def test_robe_chunk_one_hashes_every_element_to_its_own_offset():
    emb = build(fields_of(2000), budget=400_000, chunk=1)
    positions, _ = emb.offsets_and_signs(torch.arange(2000).unsqueeze(-1), [0])
    assert ((positions[..., 1:] - positions[..., :-1]) == 1).float().mean() < 0.01


def test_robe_signs_are_balanced_and_differ_between_fields_reading_the_same_id():
    emb = build(fields_of(5000, 5000), budget=400_000)
    ids = torch.arange(5000).unsqueeze(-1).expand(-1, 2)
    positions, signs = emb.offsets_and_signs(ids, [0, 1])
    assert abs(signs.float().mean().item()) < 0.02
    assert (positions[:, 0] != positions[:, 1]).any(1).float().mean() > 0.99


def test_robe_gradient_reaches_only_the_elements_read():
    emb = build(fields_of(300), budget=400_000)
    ids = torch.tensor([3, 17, 250])
    emb.lookup(0, ids).sum().backward()
    positions, _ = emb.offsets_and_signs(ids.unsqueeze(-1), [0])
    touched = emb.array.grad.coalesce().indices()[0]
    assert set(touched.tolist()) == set(positions.flatten().tolist())


def test_robe_chunk_beyond_the_sign_bits_is_a_config_error():
    with pytest.raises(ConfigError, match="chunk must be within"):
        build(fields_of(100), chunk=65)


def test_robe_budget_below_one_value_is_a_budget_error():
    with pytest.raises(BudgetError, match="below one value"):
        build(fields_of(100), budget=11)


def test_robe_starts_at_the_full_tables_scale():
    emb = build(fields_of(50_000), budget=400_000)
    assert abs(emb.lookup(0, torch.arange(50_000)).std().item() - 0.01) < 0.001


@pytest.mark.parametrize("dim,chunk,budget", [(16, 32, 4000), (16, 4, 4000), (40, 32, 4000), (7, 3, 3000), (16, 32, 40)])
def test_robe_serves_by_blocks_exactly_what_it_trains_with_wrapping_blocks_included(dim, chunk, budget):
    fields = [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate([300, 20, 1000])]
    emb = create_embedding(fields, EmbeddingConfig("robe", dim=dim, budget_bytes=budget, options={"chunk": chunk}))
    ids = torch.stack([torch.randint(0, f.cardinality, (500,)) for f in fields], dim=1)
    with torch.no_grad():
        served = emb.lookup_fields(ids, [0, 1, 2])
    trained = emb.lookup_fields(ids, [0, 1, 2])
    assert all(torch.equal(a, b.detach()) for a, b in zip(served, trained))


@pytest.mark.parametrize("dim,chunk,budget", [(16, 32, 4000), (16, 4, 4000), (40, 32, 4000), (7, 3, 3000), (16, 32, 40)])
def test_robe_gradient_is_each_read_elements_upstream_gradient_times_its_sign_at_its_position(dim, chunk, budget):
    fields = [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate([300, 20, 1000])]
    emb = create_embedding(fields, EmbeddingConfig("robe", dim=dim, budget_bytes=budget, options={"chunk": chunk}))
    generator = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, f.cardinality, (500,), generator=generator) for f in fields], dim=1)
    upstream = [torch.randn(500, dim, generator=generator) for _ in fields]
    torch.autograd.backward(emb.lookup_fields(ids, [0, 1, 2]), upstream)
    expected = torch.zeros_like(emb.array)
    for j in range(len(fields)):
        positions, signs = emb.offsets_and_signs(ids[:, j:j + 1], [j])
        expected.index_add_(0, positions.reshape(-1), (upstream[j].unsqueeze(1) * signs).reshape(-1, 1))
    assert emb.array.grad.is_sparse and torch.allclose(emb.array.grad.to_dense(), expected, atol=1e-5)
