"""`embslim search --resume`: a search killed at any point of any stage ends exactly as an uninterrupted one."""
import json
from pathlib import Path
from typing import Callable

import pytest
import torch

from embslim.embeddings import EmbeddingConfig
from embslim.embeddings.blockwise import BlockwiseEmbedding
from embslim.embeddings.full import full_bytes
from embslim.models import ModelOptions
from embslim.search.dnis import DNISConfig
from embslim.search.pipeline import run_search
from embslim.train.run import RunConfig
from embslim.train.trainer import TrainConfig, Trainer
from conftest import TINY, Interrupt, load_tiny, run_until_killed

CONFIG = RunConfig("deepfm", EmbeddingConfig("full", 4), ModelOptions(hidden=(8,)),
                   TrainConfig(epochs=2, batch_size=256, patience=5, progress=False))
DNIS = DNISConfig(blocks=3, search_epochs=2)


def search(out: Path, resume: bool = False) -> dict:
    """The search pipeline on tiny generated data, a third of the full table's bytes."""
    budget = full_bytes(load_tiny().table.fields, [4] * len(TINY.cardinalities)) // 3
    return run_search(load_tiny(), CONFIG, budget, DNIS, out, resume=resume)


def outcome(out: Path) -> dict:
    """What must not depend on a kill: every run's metrics and history, and the layout."""
    report = json.loads((out / "report.json").read_text())
    runs = {name: (run["metrics"], run["history"]) for name, run in report["runs"].items()}
    return {"runs": runs, "search": (report["search"]["metrics"], report["search"]["history"]),
            "budget_bytes": report["budget_bytes"], "layout": (out / "layout.json").read_text()}


def stop_in(monkeypatch: pytest.MonkeyPatch, stage: str, epoch: int | None, stop: type = Interrupt) -> None:
    """The trainer of `stage` (its run folder's name) gets a `stop` callback for the third step of
    `epoch` (0-based; epoch 1 has the checkpoint of epoch 0 behind it), or is interrupted before it starts (None)."""
    init = Trainer.__init__

    def interrupted(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if self.out_dir is not None and self.out_dir.name == stage:
            if epoch is None:
                raise KeyboardInterrupt
            steps_per_epoch = self.steps_per_epoch()
            self.callbacks.append(stop(epoch * steps_per_epoch + 3))

    monkeypatch.setattr(Trainer, "__init__", interrupted)


def interrupt(out: Path, kill: Callable[[pytest.MonkeyPatch], None]) -> None:
    """Run the search with `kill` patched in until it is interrupted; nothing of it survives but its files."""
    with pytest.MonkeyPatch.context() as m:
        kill(m)
        with pytest.raises(KeyboardInterrupt):
            search(out)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as m:
        cache = tmp_path_factory.mktemp("cache")
        m.setenv("EMBSLIM_CACHE_DIR", str(cache))
        m.setenv("MPLCONFIGDIR", str(cache / "mpl"))
        out = tmp_path_factory.mktemp("uninterrupted")
        search(out)
    return outcome(out)


KILL_POINTS = {
    "full model, second epoch": ("full", 1),
    "search, first epoch": ("search", 0),
    "search, second epoch": ("search", 1),
    "after the search, before the retrain": ("dnis", None),
    "dnis retrain, second epoch": ("dnis", 1),
    "uniform baseline, second epoch": ("uniform", 1),
    "mde baseline, first epoch": ("mde", 0),
}


@pytest.mark.parametrize("stage, epoch", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_search_killed_anywhere_and_resumed_reports_exactly_the_uninterrupted_results(tmp_path, uninterrupted, stage, epoch):
    interrupt(tmp_path, lambda m: stop_in(m, stage, epoch))
    search(tmp_path, resume=True)
    assert outcome(tmp_path) == uninterrupted


def test_resume_continues_the_stage_in_flight_from_its_last_checkpoint_and_skips_finished_ones(tmp_path, monkeypatch):
    interrupt(tmp_path, lambda m: stop_in(m, "dnis", 1))
    trained = []
    train_epoch = Trainer.train_epoch
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: trained.append((self.out_dir.name, epoch)) or train_epoch(self, epoch))
    search(tmp_path, resume=True)
    assert trained == [("dnis", 1), ("uniform", 0), ("uniform", 1), ("mde", 0), ("mde", 1)]


def fail_writing_model_pt(m: pytest.MonkeyPatch) -> None:
    save = torch.save

    def killed(obj, path, *args, **kwargs) -> None:
        if "model.pt" in str(path):
            raise KeyboardInterrupt
        save(obj, path, *args, **kwargs)

    m.setattr(torch, "save", killed)


def fail_exporting(m: pytest.MonkeyPatch) -> None:
    m.setattr(BlockwiseEmbedding, "export", lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt))


ARTIFACTS = {"full": ("model.pt", fail_writing_model_pt), "dnis": ("embedding.safetensors", fail_exporting)}


@pytest.mark.parametrize("stage", ARTIFACTS)
def test_a_stage_killed_while_writing_its_artifact_is_not_finished_and_resume_writes_it(tmp_path, uninterrupted, stage):
    artifact, kill = ARTIFACTS[stage]
    interrupt(tmp_path, kill)
    assert not (tmp_path / stage / "results.json").exists()
    search(tmp_path, resume=True)
    assert (tmp_path / stage / artifact).exists()
    assert outcome(tmp_path) == uninterrupted


def test_real_kill_during_the_retrain_then_resume_matches_the_uninterrupted_search(tmp_path, uninterrupted):
    killer = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "import pytest\n"
        "from conftest import Kill\n"
        "from test_search_resume import search, stop_in\n"
        "stop_in(pytest.MonkeyPatch(), 'dnis', 0, Kill)\n"
        f"search(Path({str(tmp_path)!r}))\n"
    )
    run_until_killed(killer)
    assert (tmp_path / "layout.json").exists() and not (tmp_path / "dnis").exists()
    search(tmp_path, resume=True)
    assert outcome(tmp_path) == uninterrupted
