"""`embslim slice`: one trained run served at a smaller budget, without retraining.

A source run is an `embslim train` folder (results.json + checkpoint.pt) of a method whose
embedding implements `FeatureEmbedding.sliced`, or an `embslim search` folder (report.json +
search/checkpoint.pt: the searched DNIS model). The trained model is rebuilt from the recorded
config and weights, its embedding is asked for a copy within the budget (the method chooses
what to keep, here with a validation-loss measure), the copy replaces it under the same
backbone, an optional short fine-tune follows, and the result is evaluated on the run's own
split. The output folder holds results.json in `embslim train`'s shape plus a `slice` record,
and embedding.safetensors.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from embslim.data.fields import PreparedData
from embslim.embeddings import EmbeddingConfig, FeatureEmbedding, list_embeddings, method_info
from embslim.embeddings.base import SliceContext
from embslim.embeddings.batch import SparseBatch
from embslim.errors import BudgetError, ConfigError
from embslim.models import ModelOptions
from embslim.train.run import RunConfig, build_model, model_data, train_model, write_results
from embslim.train.objectives import task_loss
from embslim.train.trainer import TrainConfig

DATA_ARGS = "data_args.json"  # the data flags of a run, written by `embslim train` and `embslim search`
VAL_ROWS = 20_000
PRECISIONS = ("fp32", "fp16", "int8")  # storage precisions a slice tries by default (nested)


@dataclass
class SourceRun:
    """A finished run to slice: the config and weights of the model whose embedding is sliced."""

    path: Path
    kind: str  # "train" or "search"
    config: RunConfig
    state: dict
    fields: dict[str, int]
    embedding: dict
    options: dict = field(default_factory=dict)
    data_args: dict = field(default_factory=dict)


def sliceable_methods() -> list[str]:
    """Registered methods whose embedding implements `sliced`."""
    return [m for m in list_embeddings() if method_info(m).cls.sliced is not FeatureEmbedding.sliced]


def run_config_from_json(cfg: dict) -> RunConfig:
    """The RunConfig recorded in a results.json `config`."""
    emb = {k: cfg["embedding"][k] for k in ("method", "dim", "dims", "budget_bytes", "init_std", "options")}
    return RunConfig(cfg["model"], EmbeddingConfig(**emb), ModelOptions.from_dict(cfg.get("model_options", {})),
                     TrainConfig(**cfg["train"]))


def _final_state(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, weights_only=False)
    return state["best_state"] if state.get("best_state") is not None else state["model"]


def read_run(path: Path) -> SourceRun:
    """The run in `path`, or a one-line ConfigError saying why it cannot be sliced."""
    if not path.is_dir():
        raise ConfigError(f"run folder {path} does not exist")
    data_args = json.loads((path / DATA_ARGS).read_text()) if (path / DATA_ARGS).exists() else {}
    if (path / "report.json").exists():
        return _read_search(path, data_args)
    if not (path / "results.json").exists():
        if (path / "checkpoint.pt").exists() or (path / "search").is_dir():
            raise ConfigError(f"{path} is not a finished run (no results.json or report.json yet): finish it with --resume first")
        raise ConfigError(f"{path} is not an embslim run folder (no results.json or report.json)")
    results = json.loads((path / "results.json").read_text())
    method = results["config"]["embedding"]["method"]
    if method not in sliceable_methods():
        raise ConfigError(f"{path} trained embedding {method!r}, which cannot be sliced; sliceable: "
                          f"{', '.join(sliceable_methods())} runs and `embslim search` folders")
    if not (path / "checkpoint.pt").exists():
        raise ConfigError(f"{path} has no checkpoint.pt (the trained weights slicing starts from)")
    data_args = data_args or {"dataset": results["config"]["dataset"], "task": results["config"]["task"]}
    return SourceRun(path, "train", run_config_from_json(results["config"]), _final_state(path / "checkpoint.pt"),
                     results["data"]["fields"], results["embedding"], data_args=data_args)


def _read_search(path: Path, data_args: dict) -> SourceRun:
    report = json.loads((path / "report.json").read_text())
    checkpoint = path / "search" / "checkpoint.pt"
    if not checkpoint.exists():
        raise ConfigError(f"{path} has no search/checkpoint.pt (the searched model slicing starts from)")
    full = report["runs"]["full"]
    data_args = data_args or {"dataset": report["dataset"], "task": report["task"]}
    config = run_config_from_json(full["config"])
    dnis = dict(report["search"]["config"])
    blocks = dnis["blocks"]
    dnis["blocks"] = tuple(blocks) if isinstance(blocks, list) else blocks
    emb = EmbeddingConfig("dnis", config.embedding.dim, init_std=config.embedding.init_std,
                          options={"blocks": list(blocks) if isinstance(blocks, list) else blocks})
    return SourceRun(path, "search", replace(config, embedding=emb), _final_state(checkpoint), full["data"]["fields"],
                     report["search"]["embedding"], {"dnis": dnis, "search_folder": str(path / "search")}, data_args)


def validation_loss(model, data: PreparedData, max_rows: int, seed: int, half: int | None = None):
    """`val_loss(embedding)`: mean task loss of `model` with `embedding` in its place, on at most
    `max_rows` validation rows (a seeded sample), in fixed batches; `half` 0 or 1: only every other
    of those rows (two disjoint halves)."""
    if data.task == "topk":
        raise ConfigError("slice measures validation loss of ctr and rating runs; top-k runs are not supported yet")
    table = data.split("val")
    if len(table) > max_rows:
        table = table.take(np.sort(np.random.default_rng([seed, 11]).choice(len(table), max_rows, replace=False)))
    if half is not None:
        table = table.take(np.arange(half, len(table), 2))
    batches = [SparseBatch.from_table(table, np.arange(s, min(s + 16384, len(table)))) for s in range(0, len(table), 16384)]

    @torch.no_grad()
    def val_loss(embedding: FeatureEmbedding) -> float:
        own = model.embedding
        model.embedding = embedding
        try:
            model.eval()
            total = sum(float(task_loss(data.task, model(b), b.label, reduction="sum")) for b in batches)
        finally:
            model.embedding = own
        return total / max(len(table), 1)

    return val_loss


def slice_run(source: SourceRun, data: PreparedData, budget_bytes: int, out: Path, fine_tune_epochs: int = 0,
              budget_asked: str | None = None, val_rows: int = VAL_ROWS, progress: bool = False,
              precisions: tuple[str, ...] = PRECISIONS) -> dict:
    """Slice `source` to `budget_bytes` at one of `precisions`, fine-tune for up to `fine_tune_epochs` (early-stopped;
    the slice itself stays when no epoch beats it on validation), evaluate;
    writes out/results.json and out/embedding.safetensors and returns the results. A copy stored as codes is
    fine-tuned in its fp32 form first and quantized after (codes take no gradients)."""
    mdata = model_data(data, source.config.model)
    have = {f.name: f.cardinality for f in mdata.table.fields}
    if have != source.fields:
        raise ConfigError(f"the data loaded for slicing is not the run's (fields {have}, run {source.fields}): "
                          "pass the same data flags as the run (--dataset, --data-path, --synthetic-rows, --split-seed, ...)")
    model, mdata = build_model(data, source.config)
    model.load_state_dict(source.state)
    t0 = time.perf_counter()
    seed = source.config.train.seed
    context = SliceContext(validation_loss(model, mdata, val_rows, seed), model, mdata, source.options, seed,
                           halves=(validation_loss(model, mdata, val_rows, seed, 0), validation_loss(model, mdata, val_rows, seed, 1)),
                           precisions=tuple(precisions))
    sliced = model.embedding.sliced(budget_bytes, context)
    if sliced is None:
        raise ConfigError(f"embedding {source.config.embedding.method!r} cannot be sliced")
    if sliced.memory_bytes("serve") > budget_bytes:
        raise BudgetError(f"{sliced.method_name} sliced to {sliced.memory_bytes('serve')} bytes, above the budget of {budget_bytes}")
    choose_seconds = time.perf_counter() - t0
    config = RunConfig(source.config.model, replace(source.config.embedding, budget_bytes=budget_bytes), source.config.model_options,
                       replace(source.config.train, epochs=fine_tune_epochs, progress=progress, start_is_candidate=True))
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    fine_tuned = None
    if fine_tune_epochs and hasattr(sliced, "fine_tune_form"):
        model.embedding = sliced.fine_tune_form()
        fine_tuned = train_model(model, mdata, config, None)
        sliced = sliced.requantized(model.embedding)
        config = replace(config, train=replace(config.train, epochs=0))
    model.embedding = sliced
    results = train_model(model, mdata, config, out, save=lambda m, path: m.embedding.export(path / "embedding.safetensors"))
    if fine_tuned is not None:
        results["history"] = fine_tuned["history"]
        results["timing"]["train_seconds"] = fine_tuned["timing"]["train_seconds"]
    results["slice"] = {"source": str(source.path), "source_kind": source.kind, "source_method": source.config.embedding.method,
                        "source_bytes": source.embedding.get("bytes"), "budget_asked": budget_asked or str(budget_bytes),
                        "budget_bytes": budget_bytes, "fine_tune_epochs": fine_tune_epochs, "choose_seconds": choose_seconds,
                        "precisions": list(precisions),
                        **({"fine_tuned_fp32": {"metrics": fine_tuned["metrics"], "bytes": fine_tuned["embedding"]["bytes"],
                                                "then": f"stored as {sliced.precision}"}} if fine_tuned is not None else {}),
                        "choice": context.record}
    write_results(results, out / "results.json")
    return results
