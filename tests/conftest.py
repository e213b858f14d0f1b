"""Shared fixtures: isolated caches, the real datasets when present, tiny generated data."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embslim.data import SyntheticConfig, load_dataset

SHARED = Path(os.environ.get("EMBSLIM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

TINY = SyntheticConfig(rows=3000, cardinalities=(50, 40, 30, 20), ranks=(4, 2, 1, 0), seed=1)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("EMBSLIM_CACHE_DIR", str(cache))
    monkeypatch.setenv("MPLCONFIGDIR", str(cache / "mpl"))
    return cache


def shared_dataset(folder: str) -> Path:
    path = SHARED / folder
    if not path.exists():
        pytest.skip(f"real dataset {folder} not present under {SHARED}")
    return path


@pytest.fixture
def ml100k() -> Path:
    return shared_dataset("movielens-100k")


def load_tiny(task: str = "ctr"):
    return load_dataset("synthetic", task, synthetic=TINY)


class Interrupt:
    """Trainer callback that stops training mid-epoch as a kill would (nothing after the last checkpoint survives)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_batch_end(self, trainer, step: int) -> None:
        if step == self.at_step:
            raise KeyboardInterrupt


class Kill(Interrupt):
    """Trainer callback that SIGKILLs its own process at a step: a real kill, nothing in memory survives."""

    def on_batch_end(self, trainer, step: int) -> None:
        if step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)


def run_until_killed(script: str) -> None:
    """Run a Python script in a child process that must end by SIGKILL (a `Kill` callback).

    The child uses this process's torch thread count: results are exact only for the same
    summation order, and an uninterrupted run to compare with is computed here."""
    threads = f"import torch; torch.set_num_threads({torch.get_num_threads()})\n"
    proc = subprocess.run([sys.executable, "-c", threads + script], env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL


def straight_and_resumed(config, tmp_path: Path, at_step: int) -> tuple[dict, dict]:
    """Results of one uninterrupted run of `config` on the tiny data, and of a run interrupted at `at_step`
    (as a kill would) and resumed from its last checkpoint."""
    from embslim.train.run import build_model, run, train_model

    data = load_tiny()
    straight = run(data, config, tmp_path / "straight")
    model, d = build_model(data, config)
    with pytest.raises(KeyboardInterrupt):
        train_model(model, d, config, tmp_path / "resumed", callbacks=[Interrupt(at_step=at_step)])
    model, d = build_model(data, config)
    return straight, train_model(model, d, config, tmp_path / "resumed", resume=True)
