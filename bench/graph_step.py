"""Cost of one LightGCN training step (a full propagation, forward and backward, and the optimiser step) against
one MF step with the same BPR batch, and of one full-ranking pass, on real top-k data.

Each step of LightGCN reads both whole tables and multiplies them by the normalised graph `layers` times, so its
cost grows with the number of users, items and training interactions, not with the batch. Figures are seconds
per step (median of `--steps`) and the ratio to MF measured in the same process.

    python bench/graph_step.py --dataset movielens-100k --dim 16 [--steps 10] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from embslim.bench.report import emit_json
from embslim.data import PrepareConfig, load_dataset
from embslim.embeddings import EmbeddingConfig
from embslim.models import ModelOptions
from embslim.train.run import RunConfig, build_model
from embslim.train.trainer import TrainConfig, Trainer


def step_seconds(trainer: Trainer, steps: int) -> float:
    """Median seconds of one training step (loss, backward, optimiser step) over `steps` batches of epoch 0."""
    times = []
    batches = trainer.objective.batches(0)
    trainer.model.train()
    for _ in range(steps + 1):
        batch = next(batches)
        t0 = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = load_dataset(args.dataset, "topk", config=PrepareConfig(task="topk"))
    train = TrainConfig(batch_size=args.batch_size, negatives=1, embedding_l2=5e-5, lr=5e-3, pair_loss="bpr", progress=False)
    emb = EmbeddingConfig(dim=args.dim, init_std=0.1)
    out: dict = {"dataset": args.dataset, "dim": args.dim, "layers": args.layers, "batch_size": args.batch_size,
                 "train_interactions": int(len(data.splits["train"])),
                 "fields": {f.name: f.cardinality for f in data.table.fields},
                 "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"}
    for name in ("mf", "lightgcn"):
        model, d = build_model(data, RunConfig(name, emb, ModelOptions(graph_layers=args.layers), train))
        trainer = Trainer(model, d, train)
        out[f"{name}_step_seconds"] = step_seconds(trainer, args.steps)
        out[f"{name}_steps_per_epoch"] = trainer.steps_per_epoch()
        t0 = time.perf_counter()
        trainer.evaluate("test")
        out[f"{name}_full_ranking_seconds"] = time.perf_counter() - t0
    out["lightgcn_over_mf_step"] = out["lightgcn_step_seconds"] / out["mf_step_seconds"]
    out["lightgcn_epoch_seconds"] = out["lightgcn_step_seconds"] * out["lightgcn_steps_per_epoch"]
    emit_json(out, args.out)


if __name__ == "__main__":
    main()
