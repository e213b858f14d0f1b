"""Fixed-size compression methods: their byte layouts, budget fitting and what conversion preserves."""
import numpy as np
import pytest
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, convert_embedding, create_embedding
from embslim.embeddings.full import FullEmbedding
from embslim.embeddings.hashing import HashEmbedding, HashSettings, split_rows
from embslim.embeddings.quantized import dequantize_rows, quantize_rows, quantized_bytes, row_bytes
from embslim.errors import BudgetError


def fields_of(*cards):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


@pytest.mark.parametrize("kind,expected", [("int8", 20), ("int4", 12), ("int2", 8), ("fp16", 32), ("bf16", 32)])
def test_row_bytes_at_dim_16_follow_the_fbgemm_layout(kind, expected):
    assert row_bytes(16, kind) == expected


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_rowwise_quantisation_errs_by_at_most_half_a_step(bits):
    w = torch.randn(50, 7)
    codes, scale_bias = quantize_rows(w, bits, torch.float16)
    back = dequantize_rows(codes, scale_bias, 7, bits)
    step = scale_bias[:, :1].float()
    assert codes.shape == (50, -(-7 * bits // 8))
    assert ((back - w).abs() <= step / 2 + 2e-3 * w.abs().max()).all()


@pytest.mark.parametrize("kind", ["int8", "int4", "int2", "fp16", "bf16"])
def test_converter_quantises_the_trained_table_it_is_given(kind):
    fields = fields_of(40, 30)
    full = FullEmbedding(fields, [8, 8], init_std=0.1)
    quant = convert_embedding(full, EmbeddingConfig(kind, dim=8))
    ids = torch.tensor([0, 5, 39])
    err = (quant.lookup(0, ids) - full.lookup(0, ids)).abs().max()
    assert err < {"int8": 0.01, "int4": 0.05, "int2": 0.2, "fp16": 1e-3, "bf16": 5e-3}[kind]


@pytest.mark.parametrize("kind", ["int8", "int4", "int2", "fp16"])
def test_batched_lookup_of_mixed_width_fields_equals_the_lookup_of_each_field(kind):
    fields = fields_of(40, 30, 20)
    quant = convert_embedding(FullEmbedding(fields, [8, 5, 8], init_std=0.1), EmbeddingConfig(kind, dim=8))
    ids = torch.tensor([[0, 1, 2], [39, 29, 19], [7, 7, 7]])
    batched = quant.lookup_fields(ids, [0, 1, 2])
    assert [v.shape[1] for v in batched] == [8, 5, 8]
    assert all(torch.equal(v, quant.lookup(f, ids[:, f])) for f, v in enumerate(batched))


def test_quantised_budget_below_the_natural_size_keeps_precision_and_narrows_the_width():
    fields = fields_of(1000, 500)
    budget = quantized_bytes(fields, [16, 16], "int8") // 2
    emb = create_embedding(fields, EmbeddingConfig("int8", dim=16, budget_bytes=budget))
    assert emb.dims[0] < 16 and emb.memory_bytes() <= budget < quantized_bytes(fields, [emb.dims[0] + 1] * 2, "int8")
    assert "keeps its precision" in emb.note


def test_quantised_budget_above_the_natural_size_stays_at_the_natural_size():
    fields = fields_of(1000, 500)
    emb = create_embedding(fields, EmbeddingConfig("int4", dim=16, budget_bytes=10**6))
    assert emb.dims == [16, 16] and emb.memory_bytes() == quantized_bytes(fields, [16, 16], "int4") and "natural size" in emb.note


@pytest.mark.parametrize("shared", [False, True])
def test_hash_fills_the_budget_within_one_percent_without_exceeding_it(shared):
    fields = fields_of(5000, 3000, 40)
    budget = 20_000
    emb = create_embedding(fields, EmbeddingConfig("hash", dim=8, budget_bytes=budget, options={"shared": shared}))
    assert 0.99 * budget <= emb.memory_bytes() <= budget


def test_hash_spreads_frequency_ranked_ids_instead_of_folding_them_by_modulo():
    emb = HashEmbedding(fields_of(10_000), 4, [100], HashSettings())
    rows = emb.rows_of(torch.arange(1, 101), 0)
    assert len(set(rows.tolist())) > 50 and not torch.equal(rows, torch.arange(1, 101) % 100)


def test_hash_seed_changes_the_rows():
    a = HashEmbedding(fields_of(10_000), 4, [100], HashSettings(seed=0)).rows_of(torch.arange(50), 0)
    b = HashEmbedding(fields_of(10_000), 4, [100], HashSettings(seed=1)).rows_of(torch.arange(50), 0)
    assert not torch.equal(a, b)


def test_hash_rows_keep_small_fields_whole_and_never_exceed_the_total():
    rows = split_rows([3, 5000, 8, 900], 1000)
    assert rows[0] == 3 and rows[2] == 8 and sum(rows) <= 1000 and rows[1] >= 400


def test_hash_budget_below_one_row_per_table_is_a_budget_error():
    with pytest.raises(BudgetError):
        create_embedding(fields_of(100, 100), EmbeddingConfig("hash", dim=8, budget_bytes=60))


def test_svd_at_full_rank_reproduces_the_trained_table():
    fields = fields_of(60, 20)
    full = FullEmbedding(fields, [6, 6], init_std=0.1)
    svd = convert_embedding(full, EmbeddingConfig("svd", dim=6, options={"rank": 6}))
    assert torch.allclose(svd.field_table(0), full.field_table(0), atol=1e-5)


def test_svd_rank_is_the_largest_that_fits_the_budget():
    fields = fields_of(600, 200)
    full = FullEmbedding(fields, [16, 16])
    per_rank = 4 * (800 + 2 * 16)
    svd = convert_embedding(full, EmbeddingConfig("svd", dim=16, budget_bytes=5 * per_rank + 16 + 10))
    assert svd.rank == 5


def test_lowrank_starts_at_the_full_tables_scale():
    emb = create_embedding(fields_of(5000), EmbeddingConfig("lowrank", dim=16, budget_bytes=80_000, init_std=0.01))
    assert 0.007 < emb.field_table(0).std().item() < 0.013


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("dim", [1, 7, 16])
def test_pytorchs_fused_kernel_decodes_rows_exactly_as_the_tensor_path(bits, dim):
    from embslim.embeddings.quantized import fuse_rows, fused_kernel, read_fused_rows, unfuse_rows

    if fused_kernel(bits, torch.float16, torch.device("cpu")) is None:
        pytest.skip("this PyTorch build has no quantized embedding-bag kernels")
    table = fuse_rows(*quantize_rows(torch.randn(300, dim), bits, torch.float16))
    rows = torch.randint(0, 300, (64, 3))
    codes, scale_bias = unfuse_rows(table[rows])
    expected = dequantize_rows(codes, scale_bias.contiguous().view(torch.float16), dim, bits)
    assert torch.equal(read_fused_rows(table, rows, dim, bits, torch.float16), expected)


@pytest.mark.parametrize("ids", [[5], [5, 9, 5]])
def test_int8_rows_of_odd_width_decode_without_fbgemm_one_row_or_many(ids, monkeypatch):
    from embslim.embeddings import quantized

    monkeypatch.setattr(quantized, "fbgemm_decoder", lambda: None)
    weight = torch.randn(20, 3)
    table = quantized.fuse_rows(*quantize_rows(weight, 8, torch.float16))
    got = quantized.read_fused_rows(table, torch.tensor(ids), 3, 8, torch.float16)
    assert torch.equal(got, quantized.stored_values(weight, "int8")[ids])


def test_quantized_rows_are_fbgemms_fused_layout_codes_then_scale_then_bias():
    from embslim.embeddings.quantized import fuse_rows

    codes, scale_bias = quantize_rows(torch.randn(5, 16), 4, torch.float16)
    fused = fuse_rows(codes, scale_bias)
    assert fused.shape == (5, row_bytes(16, "int4")) and torch.equal(fused[:, :8], codes)
    assert torch.equal(fused[:, 8:].contiguous().view(torch.float16), scale_bias)


def test_an_int8_artifact_with_codes_and_scales_in_separate_tensors_still_loads():
    full = FullEmbedding(fields_of(30, 4), [5, 5])
    q = convert_embedding(full, EmbeddingConfig("int8", dim=5))
    codes, scale_bias = quantize_rows(full.tables[0].detach(), 8, torch.float16)
    again = type(q)(q.fields, q.dims, q.settings)
    again.load_artifact_tensors({"offsets_5": q.offsets_5, "codes_5": codes, "scale_bias_5": scale_bias})
    ids = torch.tensor([[0, 1], [29, 3]])
    assert all(torch.equal(a, b) for a, b in zip(again.lookup_fields(ids, [0, 1]), q.lookup_fields(ids, [0, 1])))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_two_byte_floats_read_by_arithmetic_equal_the_dtype_view(dtype):
    from embslim.embeddings.quantized import two_byte_floats

    values = torch.cat([torch.randn(500) * 10.0 ** torch.randint(-6, 4, (500,)), torch.tensor([0.0, -0.0, 6e-8, -1e-7])]).to(dtype)
    raw = values.view(torch.uint8).view(-1, 4)  # two values per row, as a row's scale and bias
    assert torch.equal(two_byte_floats(raw, dtype), values.float().view(-1, 2))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fbgemms_decoder_reads_gathered_rows_exactly_as_the_tensor_path(bits):
    from embslim.embeddings.quantized import fbgemm_decoder, fuse_rows, unfuse_rows

    if fbgemm_decoder() is None:
        pytest.skip("fbgemm-gpu-cpu is not installed")
    rows = fuse_rows(*quantize_rows(torch.randn(64, 16), bits, torch.float16))
    codes, raw = unfuse_rows(rows)
    assert torch.equal(fbgemm_decoder()(rows, bits)[:, :16], dequantize_rows(codes, raw.contiguous().view(torch.float16), 16, bits))
