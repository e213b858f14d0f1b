"""`embslim export`: a trained run as TorchScript plus the embedding's safetensors, loadable without embslim."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embslim.cli import main
from embslim.data import PrepareConfig, load_dataset
from embslim.embeddings import EmbeddingConfig, SparseBatch, list_embeddings
from embslim.errors import ConfigError
from embslim.serve.export import export_run
from embslim.train.run import RunConfig, fit
from embslim.train.trainer import TrainConfig
from conftest import load_tiny
from test_embeddings import example

# Every field of the tiny data in a mixed layout: several widths, pruned and reordered columns, an empty field.
TINY_LAYOUT = {"width": 4, "fields": {
    "field0": {"blocks": [{"rows": [0, 10], "dims": [0, 1, 2, 3]}, {"rows": [10, 51], "dims": [2]}]},
    "field1": {"blocks": [{"rows": [0, 41], "dims": []}]},
    "field2": {"blocks": [{"rows": [0, 5], "dims": [3, 1]}, {"rows": [5, 31], "dims": [0, 1]}]},
    "field3": {"blocks": [{"rows": [0, 21], "dims": [0, 1, 2]}]}}}


# every registered method, and the blockwise layout with its values stored as int8 codes or fp16
EXPORTED = list_embeddings() + ["blockwise-int8", "blockwise-fp16"]


def tiny_config(method: str) -> EmbeddingConfig:
    if method == "full":
        return EmbeddingConfig(dim=5)
    if method.startswith("blockwise"):
        precision = method.partition("-")[2]
        return EmbeddingConfig("blockwise", dim=4, options={"layout": {**TINY_LAYOUT, **({"precision": precision} if precision else {})}})
    return example(method)


def trained_run(data, model: str, config: EmbeddingConfig, out: Path):
    """Train one epoch into `out` as `embslim train` does; the trained model in eval mode and its data."""
    trained, d, _ = fit(data, RunConfig(model, config, train=TrainConfig(epochs=1, progress=False)), out)
    trained.embedding.export(out / "embedding.safetensors")
    return trained.eval(), d


def served_from(folder: Path):
    """The artifact's own serve.py, imported by path (not from embslim), and the model it loads."""
    spec = importlib.util.spec_from_file_location(f"serve_{folder.name}", folder / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ServedModel(folder)


def model_outputs(model, table) -> torch.Tensor:
    with torch.no_grad():
        return model(SparseBatch.from_table(table))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """method -> (trained model, data, artifact folder, manifest), each trained and exported once."""
    cache: dict = {}
    data = load_tiny()

    def get(method: str):
        if method not in cache:
            root = tmp_path_factory.mktemp(method)
            model, d = trained_run(data, "deepfm", tiny_config(method), root / "run")
            cache[method] = (model, d, root / "model", export_run(root / "run", root / "model"))
        return cache[method]

    return get


@pytest.mark.parametrize("method", EXPORTED)
def test_reloaded_artifact_gives_the_trained_models_outputs(method, exported):
    model, data, folder, _ = exported(method)
    test = data.split("test")
    expected = model_outputs(model, test)
    got = served_from(folder)(torch.from_numpy(test.ids))
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(served_from(folder)(torch.from_numpy(test.ids[:1])), expected[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", EXPORTED)
def test_embedding_file_is_the_counted_bytes_plus_the_safetensors_header(method, exported):
    model, _, folder, manifest = exported(method)
    size = (folder / "embedding.safetensors").stat().st_size
    with open(folder / "embedding.safetensors", "rb") as fh:
        header = 8 + int.from_bytes(fh.read(8), "little")
    assert size == model.embedding.memory_bytes("serve") + header
    assert manifest["bytes"]["embedding_tensors"] == model.embedding.memory_bytes("serve")


@pytest.mark.parametrize("method", EXPORTED)
def test_program_stores_the_backbone_and_no_copy_of_the_tables(method, exported):
    model, _, _, manifest = exported(method)
    backbone = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if not k.startswith("embedding."))
    assert manifest["bytes"]["program_backbone_tensors"] == backbone
    assert manifest["bytes"]["program_constants"] < 0.25 * model.embedding.memory_bytes("serve") + 256


@pytest.mark.parametrize("model_name,task,method", [("mf", "rating", "full"), ("mf", "rating", "int8"), ("deepfm", "ctr", "mde")])
def test_movielens_runs_reload_to_the_same_outputs_bags_included(model_name, task, method, ml100k, tmp_path):
    data = load_dataset("movielens-100k", task, ml100k, PrepareConfig(task=task))
    config = EmbeddingConfig(method, dim=8, budget_bytes=None if method == "full" else 60_000)
    model, d = trained_run(data, model_name, config, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "model")
    test = d.split("test").take(np.arange(2000))
    batch = SparseBatch.from_table(test)
    served = served_from(tmp_path / "model")
    assert torch.allclose(served(batch.ids, batch.bags), model_outputs(model, test), rtol=1e-5, atol=1e-5)


def test_served_folder_runs_in_a_process_where_embslim_cannot_be_imported(exported):
    model, data, folder, _ = exported("mpe")
    test = data.split("test")
    np.save(folder / "ids.npy", test.ids[:50])
    script = ("import sys; sys.modules['embslim'] = None; sys.path.insert(0, sys.argv[1]); import numpy, torch; from serve import ServedModel; "
              "print(ServedModel(sys.argv[1])(torch.from_numpy(numpy.load(sys.argv[1] + '/ids.npy'))).tolist())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, env=env, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert np.allclose(json.loads(proc.stdout), model_outputs(model, test.take(np.arange(50))).numpy(), rtol=1e-5, atol=1e-6)


def test_missing_run_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err


@pytest.mark.parametrize("missing,message", [("results.json", "no results.json"), ("embedding.safetensors", "no embedding.safetensors"),
                                             ("checkpoint.pt", "no checkpoint.pt")])
def test_run_folder_lacking_a_file_is_a_one_line_error_naming_it(missing, message, exported, tmp_path, capsys):
    _, _, folder, _ = exported("full")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("results.json", "embedding.safetensors", "checkpoint.pt"):
        if name != missing:
            (run / name).write_bytes((folder.parent / "run" / name).read_bytes())
    with pytest.raises(ConfigError, match=message):
        export_run(run, tmp_path / "model")
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_mixed_width_program_reads_its_width_tables_as_one_joined_buffer_of_views(exported):
    _, _, folder, manifest = exported("blockwise")
    served = served_from(folder)
    by_name = dict(zip(manifest["tensors"], served.tensors))
    joined = by_name["@joined"]
    assert manifest["joined"] and all(by_name[n].untyped_storage().data_ptr() == joined.untyped_storage().data_ptr()
                                      for n in manifest["joined"])
    assert joined.numel() == sum(by_name[n].numel() for n in manifest["joined"])
    assert "aten::nonzero" not in str(served.program.inlined_graph)  # one window gather, not a gather per width group


def test_int8_mixed_width_program_keeps_its_codes_unjoined(exported):
    _, _, _, manifest = exported("blockwise-int8")
    assert manifest["joined"] == [] and "@joined" not in manifest["tensors"]
