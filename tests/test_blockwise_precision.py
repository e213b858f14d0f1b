"""Blockwise tables stored at reduced precision (fp16, row-wise int8): the bytes counted are the bytes stored,
training reads the values as they will be served, and an artifact serves exactly the trained model."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embslim.data.fields import FieldSpec
from embslim.embeddings import SparseBatch
from embslim.embeddings.blockwise import BlockwiseEmbedding, BlockwiseSettings, FieldLayout, layout_bytes, layout_to_json
from embslim.embeddings.quantized import stored_values
from embslim.embeddings.registry import load_artifact
from embslim.errors import ConfigError
from embslim.search.dnis import DNISConfig
from embslim.search.prune import prune_to_budget

LAYOUTS = {"a": FieldLayout([0, 20, 300], [[0, 2, 5, 7], [1]]), "b": FieldLayout([0, 10, 50], [[0, 1, 2, 3, 4, 5, 6, 7], []])}


def fields() -> list[FieldSpec]:
    return [FieldSpec("a", 300, np.arange(300, 0, -1)), FieldSpec("b", 50, np.arange(50, 0, -1))]


def table(precision: str, seed: int = 0) -> BlockwiseEmbedding:
    torch.manual_seed(seed)
    emb = BlockwiseEmbedding(fields(), LAYOUTS, 8, init_std=0.5, precision=precision)
    emb.settings = BlockwiseSettings(layout_to_json(LAYOUTS, 8, precision))
    return emb


def every_id() -> SparseBatch:
    ids = torch.stack([torch.arange(300), torch.arange(300) % 50], dim=1)
    return SparseBatch(ids, {}, torch.zeros(300))


@pytest.mark.parametrize("precision,per_value", [("fp32", 4), ("fp16", 2), ("int8", 1)])
def test_serving_bytes_count_each_value_at_its_precision_and_int8_scales_once_per_stored_row(precision, per_value):
    index = layout_bytes(LAYOUTS, 8) - 4 * (20 * 4 + 280 + 10 * 8)
    scales = 4 * (20 + 280 + 10) if precision == "int8" else 0  # block b's rare rows keep nothing, so store no scales
    assert table(precision).memory_bytes() == layout_bytes(LAYOUTS, 8, precision) == index + per_value * 440 + scales


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_artifact_holds_the_counted_bytes_and_serves_the_trained_values_exactly(tmp_path, precision):
    emb = table(precision)
    emb.export(tmp_path / "t.safetensors")
    stored = sum(t.numel() * t.element_size() for t in load_file(tmp_path / "t.safetensors").values())
    served = load_artifact(tmp_path / "t.safetensors")
    assert stored == emb.memory_bytes() == served.memory_bytes()
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(emb(every_id()), served(every_id())))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_lookup_without_autograd_reads_the_values_the_training_lookup_reads(precision):
    emb = table(precision)
    trained = [v.detach() for v in emb(every_id())]
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(emb(every_id()), trained))


def test_int8_values_are_read_as_their_row_wise_codes_decode():
    emb = table("int8")
    vectors = emb(every_id())[0]
    rows = emb.tables[emb._table_of[4]]
    expected = stored_values(rows.detach(), "int8")
    assert torch.equal(vectors[:20][:, [0, 2, 5, 7]], expected[:20])
    assert not torch.equal(expected, rows.detach())  # the rounding is real, so the check above is not vacuous


def test_training_through_int8_storage_passes_the_gradient_straight_to_the_float_values():
    emb = table("int8")
    emb(every_id())[0][:20].sum().backward()
    grad = next(t for w, t in zip(emb.group_widths, emb.tables) if w == 4).grad.to_dense()
    assert torch.equal(grad[:20], torch.ones(20, 4))


def test_pruning_at_int8_keeps_more_than_twice_the_values_of_fp32_within_the_same_budget():
    starts = {"a": [0, 20, 300], "b": [0, 10, 50]}
    scores = {"a": np.random.default_rng(0).random((2, 8)), "b": np.random.default_rng(1).random((2, 8))}
    three_dims = {n: FieldLayout(s, [[0, 1, 2]] * (len(s) - 1)) for n, s in starts.items()}
    budget = layout_bytes(three_dims, 8)
    kept = {p: prune_to_budget(scores, starts, 8, budget, min_dims=1, precision=p) for p in ("fp32", "int8")}
    values = {p: sum(lay.value_count() for lay in layouts.values()) for p, layouts in kept.items()}
    assert layout_bytes(kept["int8"], 8, "int8") <= budget
    assert values["int8"] > 2 * values["fp32"]


def test_an_unknown_precision_is_a_one_line_error():
    with pytest.raises(ConfigError, match="precision must be one of fp32, fp16, int8"):
        DNISConfig(precision="int3")
    with pytest.raises(ConfigError, match="precision"):
        BlockwiseEmbedding(fields(), LAYOUTS, 8, precision="bf8")


def test_mde_stored_as_int8_fits_its_budget_with_more_dimensions_and_exports_what_it_counted(tmp_path):
    from embslim.embeddings import EmbeddingConfig, create_embedding

    many = [FieldSpec("a", 2000, np.floor(1e5 / np.arange(1, 2001)).astype(np.int64)), FieldSpec("b", 300, np.arange(300, 0, -1))]
    built = {p: create_embedding(many, EmbeddingConfig("mde", dim=16, budget_bytes=30_000, options={"precision": p})) for p in ("fp32", "int8")}
    kept = {p: sum(lay.value_count() for lay in emb.layouts.values()) for p, emb in built.items()}
    assert built["int8"].memory_bytes() <= 30_000 and kept["int8"] > 2 * kept["fp32"]
    built["int8"].export(tmp_path / "m.safetensors")
    assert load_artifact(tmp_path / "m.safetensors").memory_bytes() == built["int8"].memory_bytes()
