"""What a benchmark runs: the grid of (method, budget, seed) and how one cell is trained.

Methods come from the embedding registry: every registered method that is built from
a byte budget joins the grid by itself (`uniform` is `full` at a budget), converters
train the full model and convert it, and search layers run the search pipeline; `full`
is the reference at the full width, once per seed. A new compression method needs no
change here; `method_options` sets its settings (`embslim bench --method-opt`).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from embslim.embeddings import EmbeddingConfig, list_embeddings, method_info
from embslim.embeddings.full import full_bytes
from embslim.errors import BudgetError, ConfigError
from embslim.models import model_class
from embslim.search.dnis import DNISConfig
from embslim.models import ModelOptions
from embslim.train.recipes import embedding_dim, model_options, recipe, train_options
from embslim.train.run import RunConfig, fit, write_results
from embslim.train.slice import sliceable_methods
from embslim.train.trainer import TrainConfig

REFERENCE = "full"


SLICED = "-sliced"
STORED_AS = ("fp16", "int8")  # `M-int8`: a search method whose pruned table stores its values so (DNISConfig.precision)


def benchmark_methods() -> list[str]:
    """The reference `full`, `uniform` (the reference at a budget), every registered method that a budget
    builds or a search prunes to a budget, and `M-sliced` for every method trained from scratch that
    `embslim slice` can cut: one run per seed at full size, sliced to each budget (train once, serve at any budget)."""
    infos = [method_info(m) for m in list_embeddings() if m != REFERENCE]
    sliced = [f"{m}{SLICED}" for m in sliceable_methods() if method_info(m).source == "scratch"]
    stored = [f"{i.name}-{p}" for i in infos if i.source == "search" for p in STORED_AS]
    return [REFERENCE, "uniform"] + [i.name for i in infos if i.budgeted or i.source == "search"] + sliced + stored


def registry_name(method: str) -> str:
    """The registered method behind a benchmark method (`uniform` is the reference at a budget, `M-sliced` is M,
    `M-int8` is search method M storing its pruned values as int8)."""
    if method == "uniform":
        return REFERENCE
    base, _, suffix = method.rpartition("-")
    return base if base and suffix in STORED_AS else method.removesuffix(SLICED)


def stored_precision(method: str) -> dict:
    """The DNIS setting a search benchmark method's `-fp16`/`-int8` suffix names ({} without one: --dnis decides)."""
    base, _, suffix = method.rpartition("-")
    return {"precision": suffix} if base and suffix in STORED_AS else {}


@dataclass(frozen=True)
class BenchSpec:
    dataset: str = "synthetic"
    task: str | None = None
    model: str = "deepfm"
    dim: int | None = None  # None: the recipe's width for the model and task (recipes.embedding_dim)
    methods: tuple[str, ...] = ("full", "uniform", "dnis", "mde")
    budgets: tuple[float, ...] = (0.5, 0.2, 0.1)
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None
    patience: int | None = None  # None: the recipe's
    synthetic_rows: int | None = None
    data_path: str | None = None
    search_epochs: int = 2
    dnis: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    method: str
    budget: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-b{self.budget:g}-s{self.seed}"


def cells(spec: BenchSpec) -> list[Cell]:
    unknown = sorted(set(spec.methods) - set(benchmark_methods()))
    if unknown:
        raise ConfigError(f"unknown benchmark methods {unknown}; known: {benchmark_methods()}")
    out = []
    for seed in spec.seeds:
        for method in spec.methods:
            for budget in ((1.0,) if method == REFERENCE else spec.budgets):
                out.append(Cell(method, budget, seed))
    return out


def load(spec: BenchSpec):
    from embslim.data import PrepareConfig, load_dataset
    from embslim.data.registry import get_source
    from embslim.data.synthetic import SYNTHETIC_SHAPES, synthetic_config

    source = get_source(spec.dataset)
    config = PrepareConfig(task=spec.task or source.default_task, min_count=source.min_count)
    synthetic = synthetic_config(spec.dataset, spec.synthetic_rows) if spec.synthetic_rows and spec.dataset in SYNTHETIC_SHAPES else None
    return load_dataset(spec.dataset, config.task, Path(spec.data_path) if spec.data_path else None, config, synthetic=synthetic)


def run_cell(spec: BenchSpec, cell: Cell, out: Path) -> dict:
    """Train one cell into out/cell.name and return its row; a finished cell is read back."""
    folder = out / "runs" / cell.name
    if (folder / "row.json").exists():
        return json.loads((folder / "row.json").read_text())
    if os.environ.get("EMBSLIM_BENCH_THREADS"):  # Ray workers; process-pool workers get it from their initializer
        torch.set_num_threads(int(os.environ["EMBSLIM_BENCH_THREADS"]))
    data = load(spec)
    rec = recipe(spec.model, data.task, data.name)
    train = TrainConfig(**train_options(rec), seed=cell.seed, progress=False)
    if spec.epochs:
        train = replace(train, epochs=spec.epochs)
    if spec.patience:
        train = replace(train, patience=spec.patience)
    fields = data.select_fields(model_class(spec.model).select_fields(data.table.fields, data.user_field, data.item_field)).table.fields
    dim = embedding_dim(rec, spec.dim)
    budget = int(cell.budget * full_bytes(fields, [dim] * len(fields)))
    base = RunConfig(spec.model, EmbeddingConfig(REFERENCE, dim, init_std=rec.get("init_std", 0.01)),
                     ModelOptions.from_dict(model_options(rec)), train=train)
    reset_peak_rss()
    t0 = time.perf_counter()
    try:
        results = _train(spec, cell, data, base, budget, folder, out)
    except BudgetError as exc:
        row = {"method": cell.method, "budget": cell.budget, "budget_bytes": budget, "seed": cell.seed, "status": "infeasible", "reason": str(exc)}
        write_results(row, folder / "row.json")
        return row
    row = {"method": cell.method, "budget": cell.budget, "budget_bytes": budget, "seed": cell.seed, "status": "ok", "dim": dim,
           "bytes": results["embedding"]["bytes"], "params": results["embedding"]["params"], "note": results["embedding"].get("note"),
           **{f"val_{k}": v for k, v in results["metrics"]["val"].items()},
           **{f"test_{k}": v for k, v in results["metrics"]["test"].items()},
           "train_seconds": results["timing"]["train_seconds"], "wall_seconds": time.perf_counter() - t0,
           "inference_seconds": results["timing"].get("inference_seconds"),
           "search_seconds": results["timing"].get("search_seconds"),
           "peak_rss_mb": peak_rss_mb()}
    write_results(row, folder / "row.json")
    return row


def _train(spec: BenchSpec, cell: Cell, data, base: RunConfig, budget: int, folder: Path, out: Path) -> dict:
    """Results record of one cell: the search pipeline for a search layer, one training (and conversion) run otherwise."""
    if method_info(registry_name(cell.method)).source == "search":
        from embslim.search.pipeline import locked, run_search

        shared = out / "runs" / f"{registry_name(cell.method)}-search-s{cell.seed}"  # every precision prunes one search
        full_cell = out / "runs" / Cell(REFERENCE, 1.0, cell.seed).name
        with locked(shared):
            if (full_cell / "model.pt").exists() and (full_cell / "row.json").exists() and not (shared / "full" / "model.pt").exists():
                (shared / "full").mkdir(parents=True, exist_ok=True)
                for name in ("model.pt", "results.json"):
                    shutil.copyfile(full_cell / name, shared / "full" / name)
        settings = {"search_epochs": spec.search_epochs, **spec.dnis, **stored_precision(cell.method)}
        report = run_search(data, base, budget, DNISConfig(**settings), folder, resume=True, baselines=(),
                            search_dir=shared)
        results = report["runs"]["dnis"]
        results["timing"]["search_seconds"] = report["timing"]["search_seconds"]
        return results
    if cell.method.endswith(SLICED):
        return _slice(spec, cell, data, base, budget, folder, out)
    method = registry_name(cell.method)
    emb = replace(base.embedding, method=method, budget_bytes=None if cell.method == REFERENCE else budget,
                  options=dict(spec.method_options.get(cell.method, {})))
    config = replace(base, embedding=emb)
    model, d, results = fit(data, config, folder, resume=True)
    results["timing"]["inference_seconds"] = inference_seconds(model, d)
    if cell.method == REFERENCE:
        torch.save(model.state_dict(), folder / "model.pt")
    return results


# After slicing, fine-tune for up to the run's own epochs, stopped by its patience on validation (the slice itself
# stays if no epoch beats it: one-pass data such as Criteo's can lose by a second pass). Nested slices of
# ML-100K CTR DeepFM, seeds 0-2: test AUC at 20% / 10% 0.7813 / 0.7785 after one epoch, 0.7829 / 0.7800 so.


def _slice(spec: BenchSpec, cell: Cell, data, base: RunConfig, budget: int, folder: Path, out: Path) -> dict:
    """Results of slicing the seed's one full-size run of the method (trained by whichever cell gets there first)."""
    from embslim.search.pipeline import locked
    from embslim.train.slice import read_run, slice_run

    method = registry_name(cell.method)
    source = out / "runs" / f"{method}-source-s{cell.seed}"
    with locked(source):
        if not (source / "results.json").exists():
            emb = replace(base.embedding, method=method, options=dict(spec.method_options.get(cell.method, {})))
            fit(data, replace(base, embedding=emb), source, resume=True)
    run = read_run(source)
    return slice_run(run, data, budget, folder, fine_tune_epochs=run.config.train.epochs)


def reset_peak_rss() -> None:
    """Start a new peak-memory measurement in this (possibly reused) worker process, where Linux allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory since `reset_peak_rss` (Linux), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inference_seconds(model, data) -> float:
    """Wall seconds to score the test split once after training: its rows (batch 16384), or for top-k every
    catalogue item for each test user (the objective's ranking scores, in its chunks)."""
    import numpy as np
    import torch

    from embslim.embeddings.batch import SparseBatch
    from embslim.train.objectives import create_objective
    from embslim.train.trainer import TrainConfig

    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        if data.task == "topk":
            objective = create_objective(model, data, TrainConfig(progress=False))
            users = data.row_users()[data.splits["test"]]
            t0 = time.perf_counter()
            step = objective.users_per_chunk(len(data.items.label))
            for s in range(0, len(users), step):
                objective.rank_scores(users[s:s + step], "test")
        else:
            table = data.split("test")
            for s in range(0, len(table), 16384):
                model(SparseBatch.from_table(table, np.arange(s, min(s + 16384, len(table)))))
    return time.perf_counter() - t0


def spec_dict(spec: BenchSpec) -> dict:
    return json.loads(json.dumps(asdict(spec)))


PRESETS: dict[str, BenchSpec] = {
    "smoke": BenchSpec(dataset="synthetic", synthetic_rows=40_000, dim=8, methods=("full", "uniform", "dnis", "mde"),
                       budgets=(0.5, 0.2, 0.1), seeds=(0,), epochs=3, search_epochs=1),
    "paper": BenchSpec(dataset="movielens-100k", task="ctr", model="deepfm", dim=16, methods=tuple(benchmark_methods()),
                       budgets=(0.5, 0.2, 0.1, 0.05, 0.01, 0.001), seeds=(0, 1, 2)),
    "paper-rating": BenchSpec(dataset="movielens-100k", task="rating", model="mf", dim=16, methods=tuple(benchmark_methods()),
                              budgets=(0.5, 0.2, 0.1, 0.05, 0.01, 0.001), seeds=(0, 1, 2)),
    # One pass over the data, as is usual on Criteo: a second epoch memorises the millions of rare ids
    # (val AUC 0.80 -> 0.75 measured). DNIS therefore never shows the weights the training rows twice: its search
    # moves alpha only and the pruned searched model is served as it is (README, "One-pass data").
    "criteo-shaped": BenchSpec(dataset="synthetic-criteo", task="ctr", model="deepfm", dim=16,
                               methods=("full", "hash", "double-hash", "multiplex", "robe", "qr"), budgets=(0.01, 0.001),
                               seeds=(0, 1, 2), epochs=1, search_epochs=1,
                               dnis={"fine_tune": True, "search_trains_weights": False, "retrain": False}),
}
