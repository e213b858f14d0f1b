"""`embslim search`: full model, DNIS search, pruning to the budget, retrain, and the baselines.

The retrain starts from the pruned, alpha-scaled searched weights, with a fresh network for rating and CTR models and
the searched one for top-k (`DNISConfig.fine_tune_network`, `retrain_network`)
(`DNISConfig.fine_tune_from="full"`, and "auto" for a backbone that reads each field along one direction:
from the aligned full model's weights and network under the searched mask) unless `DNISConfig.fine_tune` is False (then from a fresh initialisation); with `DNISConfig.retrain` False
that pruned start is served as it is.

Each stage writes its run folder (epoch checkpoints, its artifacts, then results.json)
under OUT; with `resume=True` finished stages are read back and the stage in flight
continues from its last epoch checkpoint, so a killed search ends exactly as an
uninterrupted one. Every stage seeds itself, so its result does not depend on which
stages ran before it in the process. OUT/report.json gathers them:
{"budget_asked", "budget_bytes" (what DNIS kept, at most the budget asked; the baselines get the same),
"full_bytes", "runs": {"full", "dnis", "uniform", "mde"}, "search",
"kept_dims", "timing", and "warm_start" when the search held out training rows (`search_source`)}; OUT/layout.json is the pruned configuration and
OUT/kept_dims.png its picture.

The full model and the search do not depend on the budget: with `search_dir` several
budgets share them (the benchmark does), and a file lock makes concurrent workers
wait for one search instead of repeating it.
"""
from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from embslim.data.fields import PreparedData
from embslim.data.splits import hold_out
from embslim.embeddings import EmbeddingConfig
from embslim.embeddings.blockwise import layout_bytes, layout_to_json
from embslim.models.base import Recommender
from embslim.search.align import align_to_principal_axes
from embslim.search.dnis import (AlphaStep, DNISConfig, layout_for_budget, layout_for_threshold, pruned_values, rank_pairs,
                                 search_train_config, warm_start_from)
from embslim.search.importance import cached_loss_increase
from embslim.search.report import dims_per_field, kept_dims_table, plot_kept_dims, summary_lines
from embslim.train.checkpoint import save_checkpoint
from embslim.train.run import RunConfig, build_model, describe_embedding, train_model, write_results
from embslim.train.run import fit as train_or_convert
from embslim.train.trainer import Trainer

BASELINES = ("uniform", "mde")


def _stage(out: Path, resume: bool, train: Callable[[Path, bool], dict]) -> dict:
    """Results of a stage: read back when finished and resuming, else `train(out, resume)`,
    which continues from the stage's last epoch checkpoint when resuming."""
    done = out / "results.json"
    if resume and done.exists():
        return json.loads(done.read_text())
    return train(out, resume)


def save_state(model: Recommender, out: Path) -> None:
    """The trained weights as out/model.pt (atomically: the search warm-starts from them)."""
    save_checkpoint(model.state_dict(), out / "model.pt")


def export_embedding(model: Recommender, out: Path) -> None:
    """The trained tables as out/embedding.safetensors."""
    model.embedding.export(out / "embedding.safetensors")


@contextmanager
def locked(folder: Path):
    """Hold an exclusive lock on `folder` (created if needed) across processes."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_search(data: PreparedData, config: RunConfig, budget_bytes: int, dnis: DNISConfig, out: Path,
               resume: bool = False, baselines: tuple[str, ...] = BASELINES, search_dir: Path | None = None) -> dict:
    """Full model, search, prune to `budget_bytes`, retrain and baselines; returns the report.

    The full model and the search live in `search_dir` (default `out`) and are reused
    from there when finished, whatever the budget; a search that prunes as it goes
    (`prune_during_search`) depends on the budget and stays in `out`.
    """
    width = config.embedding.dim
    search_dir = search_dir or out
    full_config = replace(config, embedding=EmbeddingConfig("full", width, init_std=config.embedding.init_std))
    full_model, fdata = build_model(data, full_config)

    def train_full(path: Path, resume_stage: bool) -> dict:
        return train_model(full_model, fdata, full_config, path, resume_stage, save=save_state)

    with locked(search_dir):
        runs = {"full": _stage(search_dir / "full", resume, train_full)}
        full_model.load_state_dict(torch.load(search_dir / "full" / "model.pt"))
        warm, warm_run = full_model, None
        source = search_source(data, dnis, config.train.seed)
        if source is not data:  # the search warm-starts from a full model that never saw its held-out rows
            start_model, start_data = build_model(source, full_config)
            warm_run = _stage(search_dir / "full-without-holdout", resume,
                              lambda path, resume_stage: train_model(start_model, start_data, full_config, path, resume_stage, save=save_state))
            start_model.load_state_dict(torch.load(search_dir / "full-without-holdout" / "model.pt"))
            warm = start_model
    search_folder = out / "search" if dnis.prune_during_search else search_dir / "search"  # a pruning search depends on the budget
    with locked(search_folder):
        search_model, sdata, fit, search_seconds, layouts = search_dims(
            data, config, budget_bytes, dnis, warm, search_folder, resume or search_folder.parent != out)
    if warm_run:
        search_seconds += warm_run["timing"]["train_seconds"]  # the held-out warm start is part of the search's cost
    full_bytes = runs["full"]["embedding"]["bytes"]
    emb = search_model.embedding
    asked = budget_bytes
    budget_bytes = layout_bytes(layouts, width, dnis.precision)  # the baselines get the bytes DNIS kept (at most the budget asked)
    layout = layout_to_json(layouts, width, dnis.precision)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layout.json").write_text(json.dumps(layout, indent=1))

    def train_dnis(path: Path, resume_stage: bool) -> dict:
        slim_config = replace(config, embedding=EmbeddingConfig("blockwise", width, init_std=config.embedding.init_std, options={"layout": layout}))
        model, d = build_model(data, slim_config)
        if dnis.fine_tune:
            warm_start_slim(model, fine_tune_start(data, config, dnis, search_model, warm), layouts,
                            network=retrain_network(dnis, warm, data.task) == "start")
        if not dnis.retrain:  # served as pruned: evaluated, not trained
            slim_config = replace(slim_config, train=replace(slim_config.train, epochs=0))
        return train_model(model, d, slim_config, path, resume_stage, save=export_embedding)

    runs["dnis"] = _stage(out / "dnis", resume, train_dnis)
    for name in baselines:
        method, opts = baseline_method(name, emb.block_spec, dnis.precision)
        cfg = replace(config, embedding=EmbeddingConfig(method, width, budget_bytes=budget_bytes, init_std=config.embedding.init_std, options=opts))
        runs[name] = _stage(out / name, resume, lambda path, resume_stage, cfg=cfg: train_or_convert(data, cfg, path, resume_stage)[2])

    kept = kept_dims_table(layouts, {f.name: f.counts for f in sdata.table.fields})
    plot_kept_dims(kept, width, out / "kept_dims.png", f"DNIS kept dimensions, {data.name} {data.task} {config.model}")
    retrain = runs["dnis"]["timing"]["wall_seconds"]
    full_time = runs["full"]["timing"]["wall_seconds"]
    report = {
        "dataset": data.name, "task": data.task, "model": config.model,
        "budget_asked": asked, "budget_bytes": budget_bytes, "full_bytes": full_bytes,
        "runs": runs,
        "search": {"metrics": {"val": fit["val"], "test": fit["test"]}, "embedding": describe_embedding(search_model),
                   "history": fit["history"], "config": dnis.__dict__,
                   "aligned_to_principal_axes": fit["aligned"], "rows": fit["search_rows"]},
        "kept_dims": kept,
        "dims_per_field": dims_per_field(kept),
        "timing": {"full_seconds": full_time, "search_seconds": search_seconds, "retrain_seconds": retrain,
                   "search_plus_retrain_over_full": (search_seconds + retrain) / max(full_time, 1e-9)},
        **({"warm_start": {"metrics": warm_run["metrics"], "seconds": warm_run["timing"]["wall_seconds"]}} if warm_run else {}),
    }
    write_results(report, out / "report.json")
    (out / "report.txt").write_text("\n".join(summary_lines(report)) + "\n")
    return report


def baseline_method(name: str, block_spec, precision: str) -> tuple[str, dict]:
    """(registered method, settings) of a baseline at the bytes DNIS kept, storing its values as DNIS's pruned table
    does: `uniform` is the full table at the widest width that fits (stored as int8/fp16: that converter), `mde` the
    frequency rule on DNIS's blocks (at DNIS's precision)."""
    if name == "uniform":
        return ("full" if precision == "fp32" else precision), {}
    if name == "mde":
        return "mde", {"blocks": block_spec, **({"precision": precision} if precision != "fp32" else {})}
    return name, {}


def search_dims(data: PreparedData, config: RunConfig, budget_bytes: int, dnis: DNISConfig, full_model, out: Path | None = None,
                resume: bool = False) -> tuple:
    """Warm-start DNIS from a trained full model (rotated to principal axes where the backbone allows,
    `DNISConfig.align`), search alpha, prune to the budget.

    Returns (search model, its data, trainer results, search seconds, per-field layouts);
    the seconds are those of the search's training epochs (alpha steps included) plus the measuring of
    the pruning scores' loss increases, also when either was finished earlier and only read back.
    """
    search_config = replace(config, embedding=search_embedding(config, dnis), train=search_train_config(config.train, dnis))
    source = search_source(data, dnis, config.train.seed)
    search_model, sdata, aligned = warm_search_model(source, search_config, dnis, full_model)
    callback = AlphaStep(search_model, sdata, dnis, config.train.batch_size, config.train.seed,
                         budget_bytes if dnis.prune_during_search else None, search_config.train)
    with frozen_weights(search_model, not dnis.search_trains_weights):
        fit = Trainer(search_model, sdata, search_config.train, out, [callback]).fit(resume=resume)
    seconds = fit["timing"]["train_seconds"]
    if dnis.threshold is None:
        lower, scoring = cached_loss_increase(search_model, sdata, dnis.noise_z, dnis.importance_rows, config.train.seed, out) \
            if dnis.score == "loss" else (None, 0.0)
        seconds += scoring  # measuring the evidence is part of the search's cost, also when read back
        layouts = layout_for_budget(search_model.embedding, budget_bytes, dnis, rank_pairs(search_model.embedding, dnis, lower))
    else:
        layouts = layout_for_threshold(search_model.embedding, dnis.threshold)
    fit["aligned"] = aligned
    fit["search_rows"] = "validation split" if source is data else f"{dnis.search_holdout:g} of the training rows, held out"
    return search_model, sdata, fit, seconds, layouts


@contextmanager
def frozen_weights(model: Recommender, frozen: bool):
    """With `frozen`, every parameter but the search's own (alpha) takes no gradient inside the block, so a search
    that only moves alpha (`search_trains_weights=False`; its learning rates are 0 as well) computes no weight
    gradients it would throw away."""
    own = {id(p) for p in model.embedding.search_parameters()}
    held = [p for p in model.parameters() if frozen and id(p) not in own and p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in held:
            p.requires_grad_(True)


def search_embedding(config: RunConfig, dnis: DNISConfig) -> EmbeddingConfig:
    """The search layer's embedding settings for `config`'s width."""
    blocks = list(dnis.blocks) if isinstance(dnis.blocks, tuple) else dnis.blocks
    return EmbeddingConfig("dnis", config.embedding.dim, init_std=config.embedding.init_std, options={"blocks": blocks})


def warm_search_model(source: PreparedData, search_config: RunConfig, dnis: DNISConfig, full_model) -> tuple:
    """(search model, its data, aligned?): the search layer on `source` (`search_source`) over `full_model`'s
    weights, alpha at 1, rotated to principal axes where `dnis.align` and the backbone allow; what the search
    starts from."""
    search_model, sdata = build_model(source, search_config)
    warm_start_from(search_model, full_model)
    aligned = dnis.align and align_to_principal_axes(search_model)
    return search_model, sdata, aligned


def fine_tune_start(data: PreparedData, config: RunConfig, dnis: DNISConfig, search_model: Recommender, full_model: Recommender) -> Recommender:
    """The model whose weights, under the searched mask, the retrain starts from: the searched one (e * alpha and
    the network trained with alpha) or, where `retrain_source` says "full", the full model the search started from
    (aligned as the search was, alpha at 1), so values fitted beside alpha's shrinkage are not carried over."""
    if retrain_source(dnis, full_model) == "search":
        return search_model
    return warm_search_model(search_source(data, dnis, config.train.seed), replace(config, embedding=search_embedding(config, dnis)),
                             dnis, full_model)[0]


def retrain_source(dnis: DNISConfig, model: Recommender) -> str:
    """`dnis.fine_tune_from`, with "auto" resolved: "full" where the search aligns each field to the one direction
    the backbone reads it (`field_reader_directions`, LR), since every layout keeps that dimension (`min_dims`) and
    so holds the full model exactly, while the searched values carry alpha's shrinkage (measured: LR CTR on
    MovieLens-100K 0.7702 from the full model at 50/20/10%, 0.7694 from the searched one); "search" elsewhere."""
    if dnis.fine_tune_from != "auto":
        return dnis.fine_tune_from
    return "full" if dnis.align and dnis.min_dims >= 1 and model.field_reader_directions() is not None else "search"


def retrain_network(dnis: DNISConfig, model: Recommender, task: str) -> str:
    """`dnis.fine_tune_network`, with "auto" resolved: a fresh network where the retrain starts from the searched values of
    a rating or CTR model, which learns to read the slim tables instead of keeping the one fitted to full-width inputs
    scaled by alpha (MovieLens-100K, 3 seeds, DeepFM CTR at 50/20/10%: 0.7857/0.7850/0.7820 with the searched network,
    0.7864/0.7868/0.7829 fresh; NeuMF RMSE at 50% 0.9351 -> 0.9265); the start's own network elsewhere: from the full
    model (LR) it computes the full model exactly with the aligned tables (a fresh one cost LR up to 0.017 AUC), and a
    top-k sequence model's attention stack, retrained fresh, stops early (SASRec on MovieLens-100K at 20%: NDCG@10
    0.0683 fresh against 0.0719 with the searched network)."""
    if dnis.fine_tune_network != "auto":
        return dnis.fine_tune_network
    return "fresh" if retrain_source(dnis, model) == "search" and task in ("rating", "ctr") else "start"


def search_source(data: PreparedData, dnis: DNISConfig, seed: int) -> PreparedData:
    """The data the search runs on. Alpha and the pruning scores are fitted on the split the search sees as
    validation; were that the real validation split, the retrain, selected on it, would carry that fit as an
    optimistic validation score (measured on MovieLens-100K: DNIS best on validation in every LR cell, worst on
    test). So where examples are independent rows (rating, CTR) the search holds out `search_holdout` of the
    training rows instead, and warm-starts from a full model trained without them (`run_search`), so alpha
    meets rows no weight was fitted on; top-k keeps its per-user validation split (its histories need every
    training row)."""
    if not dnis.search_holdout or data.task not in ("rating", "ctr"):
        return data
    return replace(data, splits=hold_out(data.splits, dnis.search_holdout, seed))


def warm_start_slim(model: Recommender, start: Recommender, layouts: dict, network: bool = True) -> None:
    """Start the slim `model` from `start` (`fine_tune_start`): its pruned values under `layouts` and, with `network`,
    its network; without, the network keeps its fresh initialisation and learns to read the slim tables anew."""
    model.embedding.load_block_values(pruned_values(start.embedding, layouts))
    if network:
        warm_start_from_network(model, start)


def warm_start_from_network(model, search_model) -> None:
    """Copy the searched network (not the embedding) into the slim model, for fine-tuning."""
    state = {k: v for k, v in search_model.state_dict().items() if not k.startswith("embedding.")}
    model.load_state_dict(state, strict=False)
