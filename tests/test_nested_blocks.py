"""Per-frequency-block slicing of a nested table: frequent rows keep wider prefixes, served as a blockwise table."""
import numpy as np
import pytest
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding, load_artifact
from embslim.embeddings.base import SliceContext
from embslim.embeddings.blockwise import BlockwiseEmbedding
from embslim.embeddings.full import full_bytes
from embslim.embeddings.nested import NestedEmbedding, slice_starts
from embslim.embeddings.batch import SparseBatch
from embslim.errors import ConfigError

DIM = 8
OPTIONS = {"slice_blocks": 4, "slice_block_rows": 50}


def zipf_fields() -> list[FieldSpec]:
    """Fields whose ids are ranked by a steep training frequency (id 0 most frequent), as prepared data are."""
    return [FieldSpec(f"f{i}", n, (1e5 / np.arange(1, n + 1) ** 0.8).astype(np.int64) + 1) for i, n in enumerate((600, 400, 30))]


def frequent_batch(fields: list[FieldSpec], n: int = 4000, seed: int = 0) -> SparseBatch:
    """Ids drawn by each field's frequency: the rows a validation set would mostly touch."""
    rng = np.random.default_rng(seed)
    ids = [rng.choice(f.cardinality, n, p=f.counts / f.counts.sum()) for f in fields]
    return SparseBatch(torch.from_numpy(np.stack(ids, axis=1)), {}, torch.zeros(n))


def nested_table(options: dict = OPTIONS) -> NestedEmbedding:
    torch.manual_seed(0)
    return create_embedding(zipf_fields(), EmbeddingConfig("nested", dim=DIM, init_std=1.0, options=dict(options)))


def distance_loss(emb: NestedEmbedding):
    """A validation loss that sees frequent rows more often: squared distance to the full-width vectors."""
    batch = frequent_batch(emb.fields)
    with torch.no_grad():
        target = emb(batch)

    def val_loss(candidate) -> float:
        with torch.no_grad():
            return float(sum(((a - b) ** 2).sum() for a, b in zip(candidate(batch), target)) / len(batch.label))

    return val_loss


def slice_to(emb: NestedEmbedding, fraction: float, val_loss=None) -> tuple:
    context = SliceContext(val_loss=val_loss or distance_loss(emb))
    budget = int(full_bytes(emb.fields, [DIM] * len(emb.fields)) * fraction)
    return emb.sliced(budget, context), context.record, budget


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.1])
def test_block_slice_fits_the_budget_and_its_artifact_stores_exactly_its_bytes(tmp_path, fraction):
    emb = nested_table()
    sliced, record, budget = slice_to(emb, fraction)
    assert record["form"] == "blocks" and isinstance(sliced, BlockwiseEmbedding)
    assert sliced.memory_bytes("serve") == record["blocks"]["bytes"] <= budget
    sliced.export(tmp_path / "e.safetensors")
    stored = load_artifact(tmp_path / "e.safetensors").artifact_tensors()
    assert sum(t.numel() * t.element_size() for t in stored.values()) == sliced.memory_bytes("serve")


def test_frequent_blocks_serve_at_least_the_width_of_rarer_ones():
    _, record, _ = slice_to(nested_table(), 0.2)
    widths = record["blocks"]["widths"]
    assert all(a >= b for ws in widths.values() for a, b in zip(ws, ws[1:]))
    assert any(ws[0] > ws[-1] for ws in widths.values())  # frequency made a difference somewhere


def test_block_slice_serves_the_nested_prefixes_and_reloads_identically(tmp_path):
    emb = nested_table()
    sliced, record, _ = slice_to(emb, 0.2)
    batch = frequent_batch(emb.fields, n=500, seed=1)
    starts = [record["blocks"]["starts"][f.name] for f in emb.fields]
    widths = [record["blocks"]["widths"][f.name] for f in emb.fields]
    with torch.no_grad(), emb.serving_blocks(starts, widths):
        expected = emb(batch)
    sliced.export(tmp_path / "e.safetensors")
    reloaded = load_artifact(tmp_path / "e.safetensors")
    with torch.no_grad():
        for want, got, again in zip(expected, sliced(batch), reloaded(batch)):
            assert torch.equal(want, got) and torch.equal(got, again)


def test_per_field_prefixes_are_kept_when_blocks_measure_no_better():
    emb = nested_table()
    sliced, record, budget = slice_to(emb, 0.2, val_loss=lambda e: 1.0)
    assert record["form"] == "fields" and isinstance(sliced, NestedEmbedding) and sliced.memory_bytes("serve") <= budget


def test_a_budget_below_the_block_index_slices_per_field():
    emb = nested_table()
    sliced, record, budget = slice_to(emb, 0.005)
    assert record["form"] == "fields" and "blocks" not in record and sliced.memory_bytes("serve") <= budget


def test_one_slice_block_keeps_per_field_slicing():
    sliced, record, _ = slice_to(nested_table({**OPTIONS, "slice_blocks": 1}), 0.2)
    assert record["form"] == "fields" and "blocks" not in record and isinstance(sliced, NestedEmbedding)


def test_slice_blocks_hold_at_least_their_minimum_rows():
    field = zipf_fields()[1]
    starts = slice_starts(field, 6, 100)
    assert 1 < len(starts) - 1 <= field.cardinality // 100 and starts[0] == 0 and starts[-1] == field.cardinality
    assert slice_starts(zipf_fields()[2], 6, 100) == [0, 30]


def test_non_positive_slice_blocks_are_a_config_error():
    with pytest.raises(ConfigError, match="slice_blocks"):
        slice_starts(zipf_fields()[0], 0, 100)


def test_with_halves_blocks_are_picked_on_the_first_and_judged_on_the_second():
    emb = nested_table()
    picked = []

    def first(candidate) -> float:
        picked.append(candidate)
        return distance(candidate)

    distance = distance_loss(emb)
    context = SliceContext(val_loss=distance, halves=(first, lambda e: 1.0))  # the second half sees no difference
    budget = int(full_bytes(emb.fields, [DIM] * len(emb.fields)) * 0.2)
    sliced = emb.sliced(budget, context)
    assert picked and context.record["form"] == "fields" and isinstance(sliced, NestedEmbedding)
    assert context.record["blocks"]["judged_loss"] == context.record["fields"]["judged_loss"] == 1.0


def test_a_budget_the_trained_table_fits_keeps_it_unchanged():
    emb = nested_table()
    sliced, record, _ = slice_to(emb, 1.0)
    assert record["form"] == "fields" and sliced.serve_widths == [DIM] * len(emb.fields)
