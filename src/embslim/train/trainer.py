"""One trainer for every backbone and embedding method.

Sparse tables get their own optimiser (`table_optimizer`: lazy Adam on the rows a batch
touches by default, or row-wise Adagrad, Adagrad, SGD), the rest Adam or AdamW. Each epoch ends with a validation pass, early stopping on the task's
primary metric and an atomic checkpoint; `resume=True` continues after the last
finished epoch with the same RNG state, so a killed run ends where an uninterrupted
one would. Embedding methods hook in through `train_loss()`, `aux_loss()`,
`before_optimizer_step()`, `on_step_end()` (with a `StepContext` that knows the planned
number of steps and can reset optimiser state) and `size_is_final()`; their own state
(masks, thresholds, schedule positions) rides in the model's state dict, so it is
checkpointed with it. Callers hook in through callbacks.

Inside a torch.distributed group of several processes (`embslim train --nproc N`, torchrun) the trainer
is data-parallel (embslim.train.distributed): each rank trains on its slice of every batch through DDP,
rank 0 evaluates and writes checkpoints, and the ranks' states are compared after the first step and
every epoch.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from embslim.data.fields import FeatureTable, PreparedData
from embslim.embeddings.base import StepContext
from embslim.errors import ConfigError, DataError, EmbslimError
from embslim.models.base import Recommender
from embslim.train import distributed
from embslim.train.checkpoint import load_checkpoint, save_checkpoint
from embslim.train.metrics import PRIMARY, ctr_metrics, is_better, rating_metrics
from embslim.train.objectives import L2_MODES, Objective, create_objective, seen_matrix
from embslim.train.ranking import check_protocol, evaluate_ranking, primary_metric
from embslim.train.table_optim import ALL_TABLE_OPTIMIZERS, make_table_optimizer


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    embedding_l2: float = 0.0
    embedding_l2_mode: str = "mean"  # "mean": mean squared norm of the rows a batch used; "mba": DIN's mini-batch aware form (rating/CTR)
    optimizer: str = "adam"
    patience: int = 2
    seed: int = 0
    negatives: int = 4
    eval_batch_size: int = 16384
    progress: bool = True
    keep_best: bool = True  # end with the weights of the best validation epoch (False: the last epoch's)
    lr_decay: float = 1.0  # multiply the learning rate by this after each epoch without validation improvement
    eval_protocol: str = "full"  # top-k: full ranking, sampled100 (the SASRec paper's 100 negatives) or both
    table_optimizer: str = "adam"  # tables with sparse gradients: adam (SparseAdam), rowwise-adagrad, adagrad, sgd, or fbgemm-* (fused, `full` only)
    table_lr: float | None = None  # their learning rate (default: lr)
    seq_loss: str = "bce"  # sequence models: "bce" (one sampled negative per position) or "softmax" (sampled softmax)
    softmax_negatives: int = 128  # sequence models, seq_loss "softmax": uniform negatives shared by a batch
    temperature: float = 0.05  # sequence models, seq_loss "softmax": divides the cosine similarities
    length_batches: bool = False  # sequence models: batches of users of similar history length (objective_sequence.length_grouped)
    pair_loss: str = ""  # top-k: "" the model's own objective; "bpr" or "softmax" trains a pointwise model pairwise (objective_pairwise)
    pair_sampling: str = "interactions"  # pairwise top-k: each epoch a pass over the interactions, or "users": as many draws of a uniform user and one of its items (LightGCN's reference)
    start_is_candidate: bool = False  # fine-tunes: the weights before the first epoch compete (validated as epoch 0) and stay if no epoch beats them
    dense_precision: str = "fp32"  # "bf16": training forward under CPU/CUDA bfloat16 autocast (matmuls of the dense network; weights, optimiser state and evaluation stay fp32)


DENSE_PRECISIONS = ("fp32", "bf16")


class Callback(Protocol):
    """Called after every training step. A callback with state of its own may also define
    `state_dict()` and `load_state_dict(state)`: that state is checkpointed with the trainer's."""

    def on_batch_end(self, trainer: "Trainer", step: int) -> None: ...


class Trainer:
    """Trains `model` on `data`; writes checkpoints to `out_dir` when given.

    `embedding_l2` penalises the squared norm of the embedding rows each batch uses
    (the usual MF regulariser; sparse optimisers have no weight decay): their mean, or with
    `embedding_l2_mode="mba"` each distinct row once divided by its id's training frequency (`mba_l2`).
    """

    def __init__(self, model: Recommender, data: PreparedData, config: TrainConfig = TrainConfig(),
                 out_dir: Path | None = None, callbacks: list[Callback] | None = None) -> None:
        if config.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optimizer must be adam or adamw, got {config.optimizer!r}")
        if config.dense_precision not in DENSE_PRECISIONS:
            raise ConfigError(f"dense precision must be one of {list(DENSE_PRECISIONS)}, got {config.dense_precision!r}")
        if config.embedding_l2_mode not in L2_MODES:
            raise ConfigError(f"embedding L2 mode must be one of {list(L2_MODES)}, got {config.embedding_l2_mode!r}")
        if config.embedding_l2_mode == "mba" and data.task not in ("rating", "ctr"):
            raise ConfigError(f"embedding L2 mode 'mba' applies to rating and CTR rows, not {data.task}")
        if config.table_optimizer not in ALL_TABLE_OPTIMIZERS:
            raise ConfigError(f"table optimizer must be one of {list(ALL_TABLE_OPTIMIZERS)}, got {config.table_optimizer!r}")
        empty = [name for name, rows in data.splits.items() if len(rows) == 0]
        if empty:
            sizes = ", ".join(f"{name} {len(rows)}" for name, rows in data.splits.items())
            raise DataError(f"dataset {data.name!r} is too small to train on: no rows in its {'/'.join(empty)} split ({sizes})")
        self.model, self.data, self.config = model, data, config
        self.out_dir = out_dir
        self.callbacks = callbacks or []
        sparse = model.embedding.sparse_parameters()
        excluded = {id(p) for p in sparse} | {id(p) for p in model.embedding.search_parameters()}
        dense = [p for p in model.parameters() if id(p) not in excluded]
        dense_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizers = [dense_cls(dense, lr=config.lr, weight_decay=config.weight_decay)]
        if sparse:
            self.optimizers.append(make_table_optimizer(config.table_optimizer, sparse, config.table_lr or config.lr, model.embedding))
        train_label = data.split("train").label
        self.label_range = (float(train_label.min()), float(train_label.max()))
        if data.task == "rating" and not model.bias.detach().any():
            with torch.no_grad():  # a fresh model starts at the mean rating; a warm-started one keeps its bias
                model.bias.fill_(float(train_label.mean()))
        self.step = 0
        self.objective: Objective = create_objective(model, data, config)
        check_protocol(config.eval_protocol)
        self.rank = distributed.current()
        self.ddp = None
        if self.rank is not None:
            if getattr(model, "objective", "pointwise") != "pointwise" or config.pair_loss:
                raise ConfigError(f"several processes train pointwise backbones on rows; {type(model).__name__} "
                                  f"learns from {config.pair_loss or getattr(model, 'objective', 'pointwise')} batches (use --nproc 1)")
            self.sparse = sparse
            self.ddp = distributed.wrap(model, self.loss, sparse)

    # -- training --------------------------------------------------------------
    def loss(self, batch) -> torch.Tensor:
        """The objective's loss of one batch, through the embedding's training hooks (under bfloat16 autocast with
        `dense_precision` bf16: on CPUs with AMX or AVX512-BF16 the MLP's matmuls run several times faster)."""
        device = next(self.model.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.config.dense_precision == "bf16"):
            loss = self.model.embedding.train_loss(lambda: self.objective.loss(batch))
        aux = self.model.embedding.aux_loss()
        return loss if aux is None else loss + aux

    def steps_per_epoch(self) -> int:
        return self.objective.steps_per_epoch()

    def step_context(self) -> StepContext:
        return StepContext(self.step, self.config.epochs * self.steps_per_epoch(), self.optimizers)

    def train_step(self, batch) -> tuple[torch.Tensor, int]:
        """One optimiser step on `batch` with every hook and callback a training epoch runs (what benchmarks
        time as "a training step"); returns the mean loss over the rows this process trained on (detached, no
        sync) and their number (under --nproc, this rank's slice of the batch)."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.ddp is None:
            loss = self.loss(batch)
            loss.backward()
        else:
            rows, weight = distributed.shard_rows(len(batch), self.rank.rank, self.rank.world_size)
            batch = distributed.slice_batch(batch, rows)
            weighted = self.ddp(batch, weight)
            weighted.backward()
            distributed.sync_sparse(self.sparse)
            loss = weighted / weight
        self.model.embedding.before_optimizer_step(self.step_context())
        for opt in self.optimizers:
            opt.step()
        self.step += 1
        self.model.embedding.on_step_end(self.step_context())
        for cb in self.callbacks:
            cb.on_batch_end(self, self.step)
        if self.ddp is not None and self.step == 1:
            self.check_consistent()
        return loss.detach(), len(batch)

    def train_epoch(self, epoch: int) -> tuple[float, int]:
        self.model.train()
        total, seen, rows_trained = 0.0, 0, 0
        bar = tqdm(self.objective.batches(epoch), total=self.steps_per_epoch(), desc=f"epoch {epoch + 1}",
                   disable=not self.config.progress, leave=False, unit="batch")
        for batch in bar:
            rows_trained += len(batch)
            loss, rows = self.train_step(batch)
            total += loss * rows
            seen += rows
        return float(total) / max(seen, 1), rows_trained

    def check_consistent(self) -> None:
        """Data-parallel: stop with a ConfigError if the ranks' model states differ."""
        distributed.check_consistent(self.model, getattr(self.model.embedding, "method_name", type(self.model.embedding).__name__))

    def fit(self, resume: bool = False) -> dict:
        """Train with early stopping; returns {"val": best val metrics, "test": test metrics, "history", "timing"}."""
        cfg = self.config
        task = self.data.task
        metric = self.primary_metric()
        ckpt_path = self.out_dir / "checkpoint.pt" if self.out_dir else None
        state = load_checkpoint(ckpt_path) if (resume and ckpt_path) else None
        if not distributed.is_main():
            ckpt_path = None  # every rank resumes from rank 0's checkpoint; only rank 0 writes
        torch.manual_seed(cfg.seed)
        start_epoch, best, best_state, bad, history, train_time, samples = 0, None, None, 0, [], 0.0, 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            for opt, s in zip(self.optimizers, state["optimizers"]):
                opt.load_state_dict(s)
            torch.set_rng_state(state["rng"])
            start_epoch, best, best_state, bad = state["epoch"] + 1, state["best"], state["best_state"], state["bad_epochs"]
            history, self.step, train_time, samples = state["history"], state["step"], state["train_time"], state["samples"]
            for cb, cb_state in zip(self.callbacks, state.get("callbacks", [])):
                if cb_state is not None:
                    cb.load_state_dict(cb_state)
        if state is None and cfg.start_is_candidate and cfg.epochs > 0 and self.model.embedding.size_is_final():
            val = self.evaluate("val")
            history.append({"epoch": 0, "train_loss": None, **{f"val_{k}": v for k, v in val.items()}})
            best, best_state = val[metric], copy.deepcopy(self.model.state_dict()) if cfg.keep_best else None
        for epoch in range(start_epoch, cfg.epochs):
            if bad >= cfg.patience:
                break
            t0 = time.perf_counter()
            train_loss, n = self.train_epoch(epoch)
            train_time += time.perf_counter() - t0
            samples += n
            if self.ddp is not None:
                self.check_consistent()
            val = self.evaluate("val")
            history.append({"epoch": epoch + 1, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}})
            if cfg.progress:
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}  " + "  ".join(f"val {k} {v:.4f}" for k, v in val.items()))
            final = self.model.embedding.size_is_final()  # a table still shrinking is neither the best model nor a reason to stop
            if final and is_better(task, val[metric], best):
                best, best_state, bad = val[metric], copy.deepcopy(self.model.state_dict()) if cfg.keep_best else None, 0
            elif final:
                bad += 1
                for opt in self.optimizers:
                    for group in opt.param_groups:
                        group["lr"] *= cfg.lr_decay
            if ckpt_path:
                save_checkpoint({"epoch": epoch, "model": self.model.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
                                 "rng": torch.get_rng_state(), "best": best, "best_state": best_state, "bad_epochs": bad,
                                 "history": history, "step": self.step, "train_time": train_time, "samples": samples,
                                 "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks],
                                 "config": asdict(cfg)}, ckpt_path)
        if best_state is not None:
            self.model.load_state_dict(best_state)
        t0 = time.perf_counter()
        val, test = self.evaluate("val"), self.evaluate("test")
        eval_time = time.perf_counter() - t0
        return {"val": val, "test": test, "history": history,
                "timing": {"train_seconds": train_time, "eval_seconds": eval_time, "train_samples_per_second": samples / max(train_time, 1e-9)}}

    # -- evaluation ------------------------------------------------------------
    @torch.no_grad()
    def predict(self, table: FeatureTable) -> np.ndarray:
        self.model.eval()
        return self.finite(self.objective.predict(table))

    @staticmethod
    def finite(pred: np.ndarray) -> np.ndarray:
        if not np.isfinite(pred).all():
            raise ConfigError("training diverged (the model predicts NaN or infinity): lower --lr, --embedding-l2 or --weight-decay")
        return pred

    def primary_metric(self) -> str:
        return primary_metric(self.config.eval_protocol) if self.data.task == "topk" else PRIMARY[self.data.task][0]

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of `split`; data-parallel, rank 0's (broadcast, so every rank takes the same decisions, and
        raises the same error: a rank left waiting for rank 0 would hang)."""
        if self.rank is None:
            return self.evaluate_local(split)
        outcome = None
        if self.rank.rank == 0:
            try:
                outcome = self.evaluate_local(split)
            except EmbslimError as err:
                outcome = err
        outcome = distributed.broadcast(outcome)
        if isinstance(outcome, EmbslimError):
            raise outcome
        return outcome

    def evaluate_local(self, split: str) -> dict[str, float]:
        if self.data.task == "topk":
            return self.evaluate_ranking(split)
        table = self.data.split(split)
        pred = self.predict(table)
        if self.data.task == "rating":
            return rating_metrics(table.label, pred, *self.label_range)
        return ctr_metrics(table.label, pred)

    @torch.no_grad()
    def evaluate_ranking(self, split: str) -> dict[str, float]:
        """Each held-out user's item ranked against the catalogue, items known before `split` excluded."""
        self.model.eval()
        rows = self.data.splits[split]
        users, targets = self.data.row_users()[rows], self.data.row_items()[rows]
        excluded = seen_matrix(self.data, ("train",) if split == "val" else ("train", "val"))
        n_items = len(self.data.items.label)

        def score(chunk: np.ndarray) -> torch.Tensor:
            scores = self.objective.rank_scores(chunk, split)
            self.finite(scores.numpy())
            return scores

        return evaluate_ranking(score, users, targets, excluded, n_items, self.config.eval_protocol,
                                chunk=self.objective.users_per_chunk(n_items), seed=self.config.seed)
