"""The drop-in examples run as written: a plain-PyTorch DLRM on Criteo-format rows, one argument switching its tables."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def criteo_rows(tmp_path_factory) -> Path:
    """Rows in the Criteo TSV format: label, 13 integers (some empty), 26 hex categoricals (some empty);
    two large columns so that a method compresses them, the rest small."""
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(2000):
        ints = [str(int(rng.integers(0, 50))) if j == 0 or rng.random() > 0.1 else "" for j in range(13)]
        cats = [f"{int(rng.integers(0, 20_000 if j < 2 else 40)):08x}" if rng.random() > 0.05 else "" for j in range(26)]
        label = int(rng.random() < (0.8 if int(ints[0]) > 25 else 0.2))
        lines.append("\t".join([str(label), *ints, *cats]))
    path = tmp_path_factory.mktemp("criteo") / "rows.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dlrm_example_with_full_tables_equals_torch_tables(criteo_rows):
    example = load_example("dlrm_plain_loop")
    torch_run = example.main(["--data", str(criteo_rows), "--method", "torch", "--epochs", "1"])
    full_run = example.main(["--data", str(criteo_rows), "--method", "full", "--epochs", "1"])
    assert full_run["auc"] == torch_run["auc"]


@pytest.mark.parametrize("method,budget", [("qr", "0.1"), ("mde", "0.1"), ("int8", None), ("magnitude", "0.5")])
def test_dlrm_example_switches_its_tables_to_an_embslim_method_with_one_argument(criteo_rows, method, budget):
    example = load_example("dlrm_plain_loop")
    args = ["--data", str(criteo_rows), "--method", method, "--epochs", "1"] + (["--budget", budget] if budget else [])
    run = example.main(args)
    assert 0.5 < run["auc"] <= 1 and run["bytes"] < run["full_bytes"]
