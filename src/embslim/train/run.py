"""A whole training run: data -> embedding -> backbone -> trainer -> results.json.

Every command that trains (train, search, bench) writes results in this shape:
{"config", "data", "metrics": {"val", "test"}, "embedding": {"method", "params",
"bytes", "train_bytes", "dims"}, "timing", "history"}.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from embslim.data.cache import atomic_write_bytes
from embslim.data.encode import item_table
from embslim.data.fields import PreparedData
from embslim.embeddings import EmbeddingConfig, convert_embedding, create_embedding, method_info
from embslim.embeddings.registry import config_for_source
from embslim.embeddings.settings import settings_dict
from embslim.models import ModelOptions, Recommender, create_model, model_class
from embslim.train import distributed
from embslim.train.table_optim import state_bytes
from embslim.train.trainer import TrainConfig, Trainer


@dataclass(frozen=True)
class RunConfig:
    model: str = "deepfm"
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    model_options: ModelOptions = field(default_factory=ModelOptions)
    train: TrainConfig = field(default_factory=TrainConfig)


def model_data(data: PreparedData, model: str) -> PreparedData:
    """The data restricted to the fields the backbone `model` uses."""
    return data.select_fields(model_class(model).select_fields(data.table.fields, data.user_field, data.item_field))


def build_model(data: PreparedData, config: RunConfig) -> tuple[Recommender, PreparedData]:
    """The backbone over a fresh embedding, and the data restricted to the fields it uses."""
    data = model_data(data, config.model)
    torch.manual_seed(config.train.seed)
    embedding = create_embedding(data.table.fields, config.embedding)
    items = item_table(data.table, data.item_field) if data.table.sequence_fields else None
    model = create_model(config.model, embedding, config.model_options, data.task, data.user_field, data.item_field,
                         data.table.sequence_fields, items)
    return model, data


def describe_embedding(model: Recommender, table_optimizer: str = "adam") -> dict:
    """What results.json says of the embedding; training bytes count `table_optimizer`'s state of the sparse tables."""
    emb = model.embedding
    sparse = emb.sparse_parameters()
    out = {
        "method": getattr(emb, "method_name", type(emb).__name__),
        "params": model.embedding_params(),
        "bytes": model.embedding_bytes("serve"),
        "train_bytes": model.embedding_bytes("train") - state_bytes("adam", sparse) + state_bytes(table_optimizer, sparse),
        "dims": dict(zip([f.name for f in emb.fields], emb.dims)),
        "settings": settings_dict(emb.settings),
    }
    return {**out, "note": emb.note} if emb.note else out


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads()}


def train_model(model: Recommender, data: PreparedData, config: RunConfig, out_dir: Path | None = None,
                resume: bool = False, callbacks: list | None = None,
                save: Callable[[Recommender, Path], None] | None = None) -> dict:
    """Train an already built model and return the results record (written to out_dir/results.json).

    `save(model, out_dir)` writes the run's artifacts first, so a results.json on disk always
    means a finished run whose files all exist (what resuming relies on). Data-parallel, only rank 0 writes;
    `config.nproc` records the number of processes.
    """
    t0 = time.perf_counter()
    fit = Trainer(model, data, config.train, out_dir, callbacks).fit(resume=resume)
    results = {
        "config": {"dataset": data.name, "task": data.task, **json.loads(json.dumps(asdict(config), default=str)),
                   "nproc": distributed.world_size()},
        "data": {"rows": data.info.get("rows"), "fields": {f.name: f.cardinality for f in data.table.fields},
                 **({"history": data.info.get("history")} if data.table.sequences else {})},
        "metrics": {"val": fit["val"], "test": fit["test"]},
        "embedding": describe_embedding(model, config.train.table_optimizer),
        "timing": {"wall_seconds": time.perf_counter() - t0, **fit["timing"]},
        "history": fit["history"],
        "environment": environment(),
    }
    if out_dir is not None and distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)  # a run of 0 epochs (evaluation only) has written nothing yet
        if save is not None:
            save(model, out_dir)
        write_results(results, out_dir / "results.json")
    return results


def fit(data: PreparedData, config: RunConfig, out_dir: Path | None = None, resume: bool = False) -> tuple[Recommender, PreparedData, dict]:
    """Build and train; for a converter (int8, svd, ...) train the full model, convert it, evaluate
    the converted model (fine-tuning it for the method's `fine_tune_epochs`, if any) and record the source."""
    info = method_info(config.embedding.method)
    if info.source != "trained":
        model, data = build_model(data, config)
        return model, data, train_model(model, data, config, out_dir, resume)
    fields = model_data(data, config.model).table.fields
    source = replace(config, embedding=config_for_source(info, fields, config.embedding, info.parse(config.embedding.options)))
    model, data = build_model(data, source)
    trained = train_model(model, data, source, out_dir / "full" if out_dir is not None else None, resume)
    model.embedding = convert_embedding(model.embedding, config.embedding)
    epochs = getattr(model.embedding.settings, "fine_tune_epochs", 0)
    results = train_model(model, data, replace(config, train=replace(config.train, epochs=epochs)), out_dir, resume)
    results["embedding"]["source"] = {"method": "full", "dims": trained["embedding"]["dims"], "bytes": trained["embedding"]["bytes"],
                                      "metrics": trained["metrics"], "train_seconds": trained["timing"]["train_seconds"]}
    results["timing"]["train_seconds"] += trained["timing"]["train_seconds"]
    if out_dir is not None and distributed.is_main():
        write_results(results, out_dir / "results.json")
    return model, data, results


def run(data: PreparedData, config: RunConfig, out_dir: Path | None = None, resume: bool = False) -> dict:
    """Build and train (or train and convert); the one call behind `embslim train`."""
    model, _, results = fit(data, config, out_dir, resume)
    if out_dir is not None and distributed.is_main():
        model.embedding.export(out_dir / "embedding.safetensors")
    return results


def write_results(results: dict, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(results, indent=2, default=float).encode())
