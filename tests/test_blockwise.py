"""Blockwise mixed dimensions, the MDE rule and pruning to a budget: bytes never exceed what was asked."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, SparseBatch, create_embedding
from embslim.embeddings.blocks import block_starts
from embslim.embeddings.blockwise import VALUE_BYTES, BlockwiseEmbedding, FieldLayout, layout_bytes
from embslim.embeddings.mde import mde_layout
from embslim.search.prune import prune_by_threshold, prune_to_budget


def zipf_field(name: str, n: int, total: int = 100_000) -> FieldSpec:
    p = 1.0 / np.arange(1, n + 1)
    return FieldSpec(name, n, np.r_[0, np.floor(total * p[:-1] / p.sum())].astype(np.int64))


def test_blocks_cover_all_ids_and_put_frequent_values_in_small_blocks():
    starts = block_starts(zipf_field("a", 5000), 6)
    assert starts[0] == 0 and starts[-1] == 5000 and np.all(np.diff(starts) > 0)
    assert np.diff(starts)[0] < np.diff(starts)[-1]


def test_block_fractions_cut_at_those_shares_of_rows():
    assert block_starts(zipf_field("a", 1000), [0.1, 0.5, 1.0]).tolist() == [0, 100, 500, 1000]


def test_pruned_columns_are_zero_and_kept_ones_are_learned_values():
    fields = [FieldSpec("a", 6, np.ones(6, dtype=np.int64))]
    emb = BlockwiseEmbedding(fields, {"a": FieldLayout([0, 2, 6], [[1, 3], [0]])}, width=4)
    out = emb(SparseBatch(torch.tensor([[1], [5]]), {}, torch.zeros(2)))[0]
    assert (out[0, [0, 2]] == 0).all() and (out[0, [1, 3]] != 0).all()
    assert (out[1, 1:] == 0).all() and out[1, 0] != 0


def test_blockwise_bytes_are_computable_from_the_layout():
    fields = [zipf_field("a", 300), zipf_field("b", 50)]
    layouts = {"a": FieldLayout([0, 10, 300], [[0, 1, 2], [5]]), "b": FieldLayout([0, 50], [[1, 2]])}
    assert BlockwiseEmbedding(fields, layouts, 8).memory_bytes() == layout_bytes(layouts, 8)


@settings(max_examples=80, deadline=None)
@given(cards=st.lists(st.integers(2, 3000), min_size=1, max_size=8), width=st.integers(1, 32),
       share=st.floats(0.01, 1.0), seed=st.integers(0, 10**6))
def test_pruning_never_exceeds_the_budget_and_leaves_no_pair_that_would_fit(cards, width, share, seed):
    rng = np.random.default_rng(seed)
    fields = [zipf_field(f"f{i}", c) for i, c in enumerate(cards)]
    starts = {f.name: block_starts(f, 4).tolist() for f in fields}
    importance = {n: rng.random((len(s) - 1, width)) for n, s in starts.items()}
    full = layout_bytes({n: FieldLayout(s, [list(range(width))] * (len(s) - 1)) for n, s in starts.items()}, width)
    empty = layout_bytes({n: FieldLayout(s, [[] for _ in s[:-1]]) for n, s in starts.items()}, width)
    budget = int(empty + share * (full - empty))
    layouts = prune_to_budget(importance, starts, width, budget)
    used = layout_bytes(layouts, width)
    assert used <= budget
    unkept = [(s[b + 1] - s[b]) * VALUE_BYTES for n, s in starts.items() for b in range(len(s) - 1) for k in range(width) if k not in layouts[n].cols[b]]
    assert not unkept or budget - used < min(unkept)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.5])
def test_pruning_lands_within_one_percent_of_realistic_budgets(share):
    fields = [zipf_field(f"f{i}", c) for i, c in enumerate([944, 1653, 3, 62, 22, 796, 20])]
    starts = {f.name: block_starts(f, 6).tolist() for f in fields}
    importance = {n: np.random.default_rng(1).random((len(s) - 1, 16)) for n, s in starts.items()}
    budget = int(share * sum(f.cardinality for f in fields) * 16 * 4)
    used = layout_bytes(prune_to_budget(importance, starts, 16, budget), 16)
    assert 0.99 * budget <= used <= budget


def test_threshold_pruning_keeps_pairs_at_or_above_it():
    layouts = prune_by_threshold({"a": np.array([[0.5, 0.1], [0.2, 0.9]])}, {"a": [0, 2, 5]}, 0.2)
    assert layouts["a"].cols == [[0], [0, 1]]


@settings(max_examples=40, deadline=None)
@given(cards=st.lists(st.integers(2, 3000), min_size=1, max_size=6), width=st.integers(2, 32), share=st.floats(0.05, 1.0))
def test_mde_layout_fits_the_budget(cards, width, share):
    fields = [zipf_field(f"f{i}", c) for i, c in enumerate(cards)]
    budget = int(share * sum(cards) * width * 4) + 10_000
    assert layout_bytes(mde_layout(fields, width, budget), width) <= budget


def test_mde_gives_popular_blocks_at_least_the_dimensions_of_rare_ones():
    layouts = mde_layout([zipf_field("a", 5000)], 16, 5000 * 16 * 4 // 5)
    dims = [len(c) for c in layouts["a"].cols]
    assert dims == sorted(dims, reverse=True) and dims[0] > dims[-1]


def test_mde_embedding_reports_bytes_within_budget():
    fields = [zipf_field("a", 2000), zipf_field("b", 300)]
    emb = create_embedding(fields, EmbeddingConfig("mde", dim=8, budget_bytes=20_000))
    assert emb.memory_bytes() <= 20_000


def random_layout(rng: np.random.Generator, cards: list[int], width: int, prefix: bool) -> dict[str, FieldLayout]:
    """Random blocks keeping random column sets (or prefixes), some of them empty."""
    layouts = {}
    for i, card in enumerate(cards):
        cuts = sorted(rng.choice(np.arange(1, card), size=min(3, card - 1), replace=False).tolist())
        starts = [0] + cuts + [card]
        kept = [int(rng.integers(0, width + 1)) for _ in starts[:-1]]
        cols = [list(range(k)) if prefix else rng.permutation(width)[:k].tolist() for k in kept]
        layouts[f"f{i}"] = FieldLayout(starts, cols)
    return layouts


def reference_lookup(layouts: dict[str, FieldLayout], blocks: list[torch.Tensor], width: int, field: int, ids: torch.Tensor) -> torch.Tensor:
    """One id at a time: the block holding it, its kept values put in their columns."""
    lay = list(layouts.values())[field]
    first = sum(len(l.cols) for l in list(layouts.values())[:field])
    out = torch.zeros(len(ids), width)
    for i, v in enumerate(ids.tolist()):
        s = int(np.searchsorted(lay.starts, v, side="right")) - 1
        out[i, lay.cols[s]] = blocks[first + s][v - lay.starts[s]]
    return out


def loaded_random_layout(prefix: bool, seed: int = 3, width: int = 6) -> tuple[BlockwiseEmbedding, dict, list, torch.Tensor]:
    rng = np.random.default_rng(seed)
    cards = [40, 7, 90, 2]
    layouts = random_layout(rng, cards, width, prefix)
    fields = [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]
    emb = BlockwiseEmbedding(fields, layouts, width)
    blocks = [torch.randn(b - a, len(c)) for lay in layouts.values() for a, b, c in zip(lay.starts[:-1], lay.starts[1:], lay.cols)]
    emb.load_block_values(blocks)
    ids = torch.from_numpy(np.stack([rng.integers(0, c, 300) for c in cards], axis=1))
    return emb, layouts, blocks, ids


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-columns", "any-columns"])
def test_width_grouped_tables_serve_exactly_the_values_of_each_block(prefix):
    emb, layouts, blocks, ids = loaded_random_layout(prefix)
    served = emb(SparseBatch(ids, {}, torch.zeros(len(ids))))
    for f in range(ids.shape[1]):
        assert torch.equal(served[f], reference_lookup(layouts, blocks, emb.width, f, ids[:, f]))


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-columns", "any-columns"])
def test_lookup_without_autograd_serves_the_same_values_as_the_training_lookup(prefix, seed):
    emb, layouts, blocks, ids = loaded_random_layout(prefix, seed)
    batch = SparseBatch(ids, {}, torch.zeros(len(ids)))
    trained = [t.detach() for t in emb(batch)]
    with torch.no_grad():
        served = emb(batch)
    for f in range(ids.shape[1]):
        assert torch.equal(served[f], trained[f])
        assert torch.equal(served[f], reference_lookup(layouts, blocks, emb.width, f, ids[:, f]))


def test_width_tables_are_views_of_one_run_of_values_and_an_artifact_holds_each_table_alone():
    emb, _, _, _ = loaded_random_layout(prefix=False)
    assert all(t.untyped_storage().data_ptr() == emb.tables[0].untyped_storage().data_ptr() for t in emb.tables)
    stored = emb.artifact_tensors()
    assert sum(v.numel() for k, v in stored.items() if k.startswith("tables.")) == sum(t.numel() for t in emb.tables)
    assert len({v.untyped_storage().data_ptr() for k, v in stored.items() if k.startswith("tables.")}) == len(emb.tables)


@pytest.mark.parametrize("move", ["assign-load", "double"])
def test_lookup_without_autograd_still_serves_the_values_after_the_tables_get_storage_of_their_own(move):
    emb, layouts, blocks, ids = loaded_random_layout(prefix=False, seed=7)
    if move == "assign-load":
        emb.load_state_dict({k: v.clone() for k, v in emb.state_dict().items()}, assign=True)
    else:
        emb.double()
    with torch.no_grad():
        served = emb(SparseBatch(ids, {}, torch.zeros(len(ids))))
    for f in range(ids.shape[1]):
        assert torch.allclose(served[f].float(), reference_lookup(layouts, blocks, emb.width, f, ids[:, f]))


def test_tables_moved_then_read_under_inference_mode_still_train():
    emb, _, _, ids = loaded_random_layout(prefix=True, seed=8)
    emb.load_state_dict({k: v.clone() for k, v in emb.state_dict().items()}, assign=True)
    batch = SparseBatch(ids, {}, torch.zeros(len(ids)))
    with torch.inference_mode():
        emb(batch)
    assert not any(t.is_inference() for t in emb.tables)
    optimizer = torch.optim.SparseAdam(list(emb.tables))
    sum(v.sum() for v in emb(batch)).backward()
    optimizer.step()


def test_each_lookup_sends_one_gradient_row_to_its_width_table():
    fields = [FieldSpec("a", 6, np.ones(6, dtype=np.int64))]
    emb = BlockwiseEmbedding(fields, {"a": FieldLayout([0, 2, 4, 6], [[1, 3], [0], [2, 0]])}, width=4)
    emb.lookup(0, torch.tensor([0, 1, 3, 5, 5])).sum().backward()
    grads = {t.shape[1]: t.grad.coalesce() for t in emb.tables}
    assert grads[2].indices().tolist() == [[0, 1, 3]] and grads[2].values().tolist() == [[1, 1], [1, 1], [2, 2]]
    assert grads[1].indices().tolist() == [[1]]


def test_an_artifact_with_flat_values_loads_into_width_tables():
    fields = [FieldSpec("a", 6, np.ones(6, dtype=np.int64))]
    emb = BlockwiseEmbedding(fields, {"a": FieldLayout([0, 2, 6], [[1, 3], [0]])}, width=4)
    emb.load_artifact_tensors({"values": torch.arange(8.0).unsqueeze(1)})
    assert emb.lookup(0, torch.tensor([1, 4])).tolist() == [[0, 2, 0, 3], [6, 0, 0, 0]]


def test_gradients_reach_each_kept_value_from_its_output_column():
    rng = np.random.default_rng(5)
    cards, width = [30, 60], 5
    layouts = random_layout(rng, cards, width, prefix=False)
    fields = [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]
    emb = BlockwiseEmbedding(fields, layouts, width)
    blocks = [torch.randn(b - a, len(c)) for lay in layouts.values() for a, b, c in zip(lay.starts[:-1], lay.starts[1:], lay.cols)]
    emb.load_block_values(blocks)
    ids = torch.from_numpy(np.stack([rng.integers(0, c, 200) for c in cards], axis=1))
    weights = torch.randn(200, len(cards), width)
    torch.stack(emb(SparseBatch(ids, {}, torch.zeros(200))), 1).mul(weights).sum().backward()
    reference = [b.clone().requires_grad_() for b in blocks]
    torch.stack([reference_lookup(layouts, reference, width, f, ids[:, f]) for f in range(len(cards))], 1).mul(weights).sum().backward()
    grads = [t.grad.to_dense() for t in emb.tables]
    for (w, first, n), ref in zip(emb.block_rows(), reference):
        if w and n:
            assert torch.allclose(grads[emb.group_widths.index(w)][first:first + n], ref.grad, atol=1e-5)
