"""A method defined in this file and registered with its settings is listed, trains from the CLI and runs in the bench."""
import json
from dataclasses import dataclass

import pytest
import torch

from embslim.cli import main
from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, FeatureEmbedding, register_embedding, unregister_embedding
from embslim.embeddings.full import FullEmbedding


@dataclass(frozen=True)
class ScaledSettings:
    scale: float = 1.0


class ScaledEmbedding(FullEmbedding):
    """Full tables whose vectors are multiplied by a setting."""

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: ScaledSettings) -> "ScaledEmbedding":
        module = super().from_config(fields, config, None)
        module.settings = settings
        return module

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: ScaledSettings, meta: dict) -> "ScaledEmbedding":
        module = super().from_artifact_meta(fields, settings, meta)
        module.settings = settings
        return module

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return super().lookup(field, ids) * self.settings.scale

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        return FeatureEmbedding.lookup_fields(self, ids, fields)


@pytest.fixture
def scaled():
    register_embedding("scaled", settings=ScaledSettings, budgeted=True)(ScaledEmbedding)
    yield "scaled"
    unregister_embedding("scaled")


TINY = ["--dataset", "synthetic", "--synthetic-rows", "3000", "--epochs", "1", "--quiet"]


def test_new_method_is_listed_with_its_settings(scaled, capsys):
    main(["list"])
    assert "scale=1.0" in next(line for line in capsys.readouterr().out.splitlines() if "scaled" in line)


def test_new_method_trains_from_the_cli_with_its_settings_within_the_budget(scaled, tmp_path):
    assert main(["train", *TINY, "--embedding", "scaled", "--embedding-opt", "scale=0.5", "--budget", "0.5", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["embedding"]["method"] == "scaled" and results["embedding"]["settings"] == {"scale": 0.5}
    assert results["embedding"]["bytes"] <= results["config"]["embedding"]["budget_bytes"]


def test_new_method_runs_in_the_benchmark_with_its_settings(scaled, tmp_path, capsys):
    argv = ["bench", "--dataset", "synthetic", "--synthetic-rows", "3000", "--dim", "4", "--epochs", "1", "--methods", "full,scaled",
            "--budgets", "0.5", "--workers", "1", "--method-opt", "scaled:scale=0.5", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    row = json.loads((tmp_path / "runs" / "scaled-b0.5-s0" / "row.json").read_text())
    assert row["status"] == "ok" and row["bytes"] <= row["budget_bytes"]


def test_unknown_setting_on_the_command_line_is_one_line(scaled, capsys):
    assert main(["train", *TINY, "--embedding", "scaled", "--embedding-opt", "scael=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "scael" in err and len(err.splitlines()) == 1
