"""Slicing a nested table into reduced precision: one storage precision (fp32, fp16, int8, int4) for the whole
sliced table, widths chosen at its bytes, the precision judged on held-out validation rows."""
import json

import pytest
import torch

from embslim.cli import main
from embslim.embeddings import load_artifact
from embslim.embeddings.base import SliceContext
from embslim.embeddings.nested import NestedEmbedding, QuantizedNestedEmbedding, prefix_bytes
from embslim.errors import ConfigError

from test_nested import nested_run, slice_cli  # noqa: F401  (the module-scoped tiny nested run)
from test_nested_blocks import DIM, distance_loss, frequent_batch, nested_table

FIELDS_ONLY = {"slice_blocks": 1}  # per-field widths only: the precision is the one choice under test


def full_size(emb: NestedEmbedding) -> int:
    return prefix_bytes(emb.fields, [DIM] * len(emb.fields))


def slice_at(emb: NestedEmbedding, fraction: float, precisions: tuple[str, ...], halves=None) -> tuple:
    context = SliceContext(val_loss=distance_loss(emb), precisions=precisions, halves=halves)
    budget = int(full_size(emb) * fraction)
    return emb.sliced(budget, context), context.record, budget


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.1])
def test_budget_is_honoured_at_each_precision(precision, fraction):
    sliced, record, budget = slice_at(nested_table(FIELDS_ONLY), fraction, (precision,))
    assert isinstance(sliced, QuantizedNestedEmbedding) and sliced.precision == precision == record["precision"]
    assert sliced.memory_bytes("serve") == prefix_bytes(sliced.fields, sliced.serve_widths, precision) <= budget


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_artifact_stores_exactly_the_serving_bytes_and_reloads_identical(tmp_path, precision):
    sliced, _, _ = slice_at(nested_table(FIELDS_ONLY), 0.2, (precision,))
    sliced.export(tmp_path / "e.safetensors")
    loaded = load_artifact(tmp_path / "e.safetensors")
    stored = sum(t.numel() * t.element_size() for t in loaded.state_dict().values())
    assert isinstance(loaded, QuantizedNestedEmbedding) and stored == sliced.memory_bytes("serve") == loaded.memory_bytes("serve")
    batch = frequent_batch(sliced.fields, n=500)
    assert all(torch.equal(a, b) for a, b in zip(sliced(batch), loaded(batch)))


def test_lookups_are_zero_padded_to_the_full_width_and_close_to_the_fp32_prefixes():
    emb = nested_table(FIELDS_ONLY)
    sliced, _, _ = slice_at(emb, 0.3, ("int8",))
    batch = frequent_batch(emb.fields, n=300)
    with emb.serving(sliced.serve_widths):
        exact = emb(batch)
    for v, e, w in zip(sliced(batch), exact, sliced.serve_widths):
        assert v.shape[-1] == DIM and not v[:, w:].any()
        assert (v - e).abs().max() < 0.05 * e.abs().max()  # 255 levels per row: well within 5% of the row range


def test_the_slice_measures_the_stored_values_it_will_serve():
    emb = nested_table(FIELDS_ONLY)
    val_loss = distance_loss(emb)
    sliced, record, _ = slice_at(emb, 0.2, ("int4",))
    assert record["val_loss"] == pytest.approx(val_loss(sliced), rel=1e-5)


def test_the_judge_picks_the_precision_on_the_second_half():
    emb = nested_table(FIELDS_ONLY)
    loss = distance_loss(emb)
    chosen = []

    def choose(e):
        chosen.append(e)
        return loss(e)

    def judge(e):  # the second half prefers fp16, whatever the first measured
        return 0.0 if getattr(e, "_precision", None) == "fp16" else 1.0

    context = SliceContext(val_loss=loss, precisions=("fp32", "int8", "fp16"), halves=(choose, judge))
    sliced = emb.sliced(int(full_size(emb) * 0.3), context)
    assert chosen and context.record["precision"] == "fp16" and sliced.precision == "fp16"
    assert context.record["precision_judged_on"] == "second half of the validation rows"
    assert {p: c["judged_loss"] for p, c in context.record["precisions"].items()} == {"fp32": 1.0, "int8": 1.0, "fp16": 0.0}


def test_a_budget_the_trained_table_fits_keeps_it_in_fp32():
    emb = nested_table(FIELDS_ONLY)
    sliced, record, _ = slice_at(emb, 1.0, ("fp32", "fp16", "int8"))
    assert isinstance(sliced, NestedEmbedding) and record["precision"] == "fp32" and sliced.serve_widths == [DIM] * len(emb.fields)


@pytest.mark.parametrize("precisions", [("fp8",), (), ("int8", "float")])
def test_unknown_or_no_precisions_are_a_config_error(precisions):
    with pytest.raises(ConfigError, match="precisions"):
        slice_at(nested_table(FIELDS_ONLY), 0.2, precisions)


def test_a_loaded_quantized_table_cannot_be_fine_tuned(tmp_path):
    sliced, _, _ = slice_at(nested_table(FIELDS_ONLY), 0.2, ("int8",))
    sliced.export(tmp_path / "e.safetensors")
    with pytest.raises(ConfigError, match="fine-tune"):
        load_artifact(tmp_path / "e.safetensors").fine_tune_form()


# -- embslim slice --precisions -------------------------------------------------------------------------------
def test_cli_slice_at_int8_fine_tunes_fp32_then_stores_codes_within_the_budget(nested_run, tmp_path):  # noqa: F811
    results = slice_cli(nested_run, "0.2", tmp_path / "s", "--precisions", "int8", "--fine-tune-epochs", "1")
    loaded = load_artifact(tmp_path / "s" / "embedding.safetensors")
    stored = sum(t.numel() * t.element_size() for t in loaded.state_dict().values())
    assert isinstance(loaded, QuantizedNestedEmbedding) and loaded.precision == "int8"
    assert stored == results["embedding"]["bytes"] <= results["slice"]["budget_bytes"]
    assert [h["epoch"] for h in results["history"]] == [0, 1] and results["slice"]["fine_tuned_fp32"]["then"] == "stored as int8"


def test_cli_unknown_precision_is_one_line(nested_run, tmp_path, capsys):  # noqa: F811
    assert main(["slice", str(nested_run), "--budget", "0.2", "--out", str(tmp_path / "o"), "--quiet", "--precisions", "fp8"]) != 0
    err = capsys.readouterr().err.strip()
    assert "precisions" in err and "\n" not in err and "Traceback" not in err
