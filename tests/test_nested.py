"""Nested (Matryoshka) embeddings and `embslim slice`: prefixes, budgets, bytes, slicing, resume."""
import json

import pytest
import torch

from conftest import load_tiny, straight_and_resumed
from embslim.cli import main
from embslim.embeddings import EmbeddingConfig, create_embedding, load_artifact
from embslim.embeddings.base import SliceContext
from embslim.embeddings.full import full_bytes
from embslim.embeddings.nested import widths_for_budget
from embslim.models import create_model
from embslim.train.run import RunConfig, build_model
from embslim.train.slice import read_run, sliceable_methods
from embslim.train.trainer import TrainConfig, Trainer
from test_embeddings import make_batch, make_fields

FAST = TrainConfig(epochs=3, batch_size=256, patience=5, progress=False, seed=7)
TINY_CLI = ["--synthetic-rows", "4000", "--epochs", "2", "--batch-size", "256", "--dim", "8", "--quiet"]


def nested(fields, **kw) -> torch.nn.Module:
    return create_embedding(fields, EmbeddingConfig("nested", dim=kw.pop("dim", 8), **kw))


def test_a_prefix_is_the_full_vector_cut_to_its_width_and_zero_padded():
    fields = make_fields((30, 20, 10), 5)
    emb = nested(fields)
    batch = make_batch(fields)
    full = emb(batch)
    with emb.serving([3, 0, 8, 1]):
        cut = emb(batch)
    for vec, whole, w in zip(cut, full, [3, 0, 8, 1]):
        assert vec.shape == whole.shape
        assert torch.equal(vec[:, :w], whole[:, :w]) and not vec[:, w:].any()


def test_training_loss_is_the_mean_of_one_pass_per_trained_width():
    data = load_tiny()
    emb = create_embedding(data.table.fields, EmbeddingConfig("nested", dim=8))
    trainer = Trainer(create_model("fm", emb, task="ctr"), data, TrainConfig(progress=False))
    batch = next(trainer.objective.batches(0))
    assert emb.passes() == [[w] * 4 for w in (1, 2, 4, 8)]
    per_width = []
    for widths in emb.passes():
        with emb.serving(widths):
            per_width.append(trainer.objective.loss(batch))
    assert torch.allclose(trainer.loss(batch), torch.stack(per_width).mean())


def test_budget_is_honoured_and_only_served_columns_are_counted_and_exported(tmp_path):
    fields = make_fields((300, 200, 100), 50)
    budget = full_bytes(fields, [8] * 4) // 5
    emb = nested(fields, budget_bytes=budget)
    serve = emb.serve_widths
    assert emb.memory_bytes("serve") == full_bytes(fields, serve) <= budget
    assert emb.memory_bytes("train") == 3 * 4 * 650 * 8 + 8 * 4  # the whole table and its two Adam moments, plus offsets
    emb.export(tmp_path / "e.safetensors")
    served = load_artifact(tmp_path / "e.safetensors")
    assert served.serve_widths == serve and sum(p.numel() for p in served.parameters()) == sum(f.cardinality * w for f, w in zip(fields, serve))


def test_a_budgeted_model_also_trains_its_serve_widths():
    fields = make_fields((300, 200, 100), 50)
    emb = nested(fields, budget_bytes=full_bytes(fields, [8] * 4) // 5)
    assert emb.passes()[-1] == emb.serve_widths and len(set(emb.serve_widths)) > 1


def test_fill_gives_the_bytes_left_to_the_smallest_fields_and_uniform_keeps_one_width():
    fields = make_fields((1000, 500, 10), 5)
    budget = full_bytes(fields, [2] * 4) + 10 * 4 * 3
    assert widths_for_budget(fields, 8, budget, "uniform") == [2, 2, 2, 2]
    filled = widths_for_budget(fields, 8, budget, "fill")
    assert filled[:2] == [2, 2] and filled[2] > 2 and filled[3] > 2 and full_bytes(fields, filled) <= budget


def test_evaluation_serves_the_serve_widths():
    fields = make_fields((300, 200, 100), 50)
    emb = nested(fields, budget_bytes=full_bytes(fields, [8] * 4) // 4)
    batch = make_batch(fields)
    emb.eval()
    for a, b in zip(emb(batch), emb.served_copy()(batch)):
        assert torch.equal(a, b)


def test_only_methods_that_implement_sliced_are_sliceable():
    assert {"nested", "dnis"} <= set(sliceable_methods()) and "full" not in sliceable_methods()
    fields = make_fields((30, 20), 5)
    full = create_embedding(fields, EmbeddingConfig(dim=4))
    assert full.sliced(100, SliceContext(val_loss=lambda e: 0.0)) is None


def test_nested_run_resumed_after_an_interruption_ends_identical(tmp_path):
    config = RunConfig("deepfm", EmbeddingConfig("nested", dim=8, budget_bytes=2000), train=FAST)
    straight, resumed = straight_and_resumed(config, tmp_path, at_step=15)
    assert resumed["metrics"] == straight["metrics"] and resumed["embedding"] == straight["embedding"]


# -- embslim slice -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nested_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nested-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBSLIM_CACHE_DIR", str(folder / "cache"))
        assert main(["train", *TINY_CLI, "--embedding", "nested", "--out", str(folder / "run")]) == 0
    return folder / "run"


def slice_cli(run_dir, budget, out, *extra) -> dict:
    assert main(["slice", str(run_dir), "--budget", budget, "--out", str(out), "--quiet", *extra]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("budget", ["0.5", "0.2", "0.1", "1500", "10"])
def test_sliced_artifact_fits_the_budget(nested_run, tmp_path, budget):
    results = slice_cli(nested_run, budget, tmp_path / "s")
    stored = sum(t.numel() * t.element_size() for t in load_artifact(tmp_path / "s" / "embedding.safetensors").state_dict().values())
    assert stored == results["embedding"]["bytes"] <= results["slice"]["budget_bytes"]


def test_sliced_results_have_the_shape_of_a_training_run_plus_a_slice_record(nested_run, tmp_path):
    results = slice_cli(nested_run, "0.2", tmp_path / "s")
    trained = json.loads((nested_run / "results.json").read_text())
    assert set(trained) <= set(results) and set(results["metrics"]) == {"val", "test"}
    record = results["slice"]
    served = {"fields": "nested", "blocks": "blockwise"}[record["choice"]["form"]]  # per-field prefixes, or per frequency block
    assert set(trained["embedding"]) <= set(results["embedding"]) and results["embedding"]["method"] == served
    assert record["source"] == str(nested_run) and record["source_method"] == "nested" and record["budget_asked"] == "0.2"
    assert set(record["choice"]["widths"]) == set(trained["embedding"]["dims"])


def test_reloaded_sliced_artifact_reproduces_the_sliced_models_test_metrics(nested_run, tmp_path):
    results = slice_cli(nested_run, "0.2", tmp_path / "s")
    source = read_run(nested_run)
    data = load_from_run(nested_run)
    model, mdata = build_model(data, source.config)
    model.load_state_dict(source.state)
    model.embedding = load_artifact(tmp_path / "s" / "embedding.safetensors")
    assert Trainer(model, mdata, FAST).evaluate("test") == results["metrics"]["test"]


def load_from_run(run_dir):
    from embslim.cli import build_parser, load_from_args

    args = build_parser().parse_args(["train", "--synthetic-rows", "4000"])
    return load_from_args(args)


def test_slice_at_a_loose_budget_predicts_like_the_full_width_model(nested_run, tmp_path):
    results = slice_cli(nested_run, "1.0", tmp_path / "s")
    trained = json.loads((nested_run / "results.json").read_text())
    assert results["metrics"]["test"] == trained["metrics"]["test"]
    assert results["embedding"]["bytes"] == trained["embedding"]["bytes"]


def test_fine_tuning_after_slicing_trains_the_sliced_model(nested_run, tmp_path):
    results = slice_cli(nested_run, "0.2", tmp_path / "s", "--fine-tune-epochs", "1")
    assert [h["epoch"] for h in results["history"]] == [0, 1]  # the slice as it came (epoch 0) competes with the fine-tuned one
    assert results["embedding"]["bytes"] <= results["slice"]["budget_bytes"]


def test_search_run_slices_to_a_smaller_budget(tmp_path):
    search = ["search", *TINY_CLI, "--search-epochs", "1", "--budget", "0.5", "--baselines", "", "--out", str(tmp_path / "search")]
    assert main(search) == 0
    results = slice_cli(tmp_path / "search", "0.2", tmp_path / "s")
    assert results["embedding"]["method"] == "blockwise" and results["embedding"]["bytes"] <= results["slice"]["budget_bytes"]
    assert results["slice"]["source_kind"] == "search"


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embslim: error:") and "\n" not in err
    return err


def test_missing_run_folder_is_one_line(capsys, tmp_path):
    assert "does not exist" in one_line_error(capsys, ["slice", str(tmp_path / "nope"), "--budget", "0.1", "--out", str(tmp_path / "o")])


def test_unfinished_run_is_one_line(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    assert "not a finished run" in one_line_error(capsys, ["slice", str(tmp_path / "run"), "--budget", "0.1", "--out", str(tmp_path / "o")])


def test_folder_that_is_no_run_is_one_line(capsys, tmp_path):
    assert "not an embslim run" in one_line_error(capsys, ["slice", str(tmp_path), "--budget", "0.1", "--out", str(tmp_path / "o")])


def test_run_of_a_method_that_cannot_be_sliced_is_one_line(capsys, tmp_path):
    assert main(["train", *TINY_CLI, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    err = one_line_error(capsys, ["slice", str(tmp_path / "run"), "--budget", "0.1", "--out", str(tmp_path / "o")])
    assert "'full'" in err and "cannot be sliced" in err

