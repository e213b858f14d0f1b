"""Full-ranking evaluation speed: one matrix product per chunk of users against scoring every (user, item) pair.

Top-k evaluation ranks each held-out item against the whole catalogue. Before the objectives, embslim ran the
model over every (user, item) pair; a model with `retrieval` (MF today; the sequence and graph backbones) scores
a chunk of users with one product of their query vectors and the item table. This script times both paths on the
same MF model (dim 16, randomly initialised: the speed does not depend on training) over every test user of a
top-k dataset, and the sampled protocol (100 drawn negatives per user) on the matrix-product path. The per-pair path is timed on `--pair-users` users and its time for all users extrapolated
linearly (it is linear in users); the ratio is per user, measured in the same process.

    python bench/ranking_eval.py [--dataset amazon-video-games] [--pair-users 16] [--out [DIR]]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from embslim.bench.report import machine_line
from embslim.data import load_dataset
from embslim.embeddings import EmbeddingConfig
from embslim.errors import EmbslimError
from embslim.train.objectives import seen_matrix
from embslim.train.ranking import evaluate_ranking
from embslim.train.run import RunConfig, build_model
from embslim.train.trainer import TrainConfig, Trainer


def timed(fn) -> tuple[float, dict]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(dataset: str, pair_users: int) -> dict:
    data = load_dataset(dataset, "topk")
    model, d = build_model(data, RunConfig("mf", EmbeddingConfig(dim=16, init_std=0.1)))
    trainer = Trainer(model, d, TrainConfig(progress=False))
    model.eval()
    held = d.split("test")
    users = held.ids[:, held.single_index(d.user_field)]
    targets = held.ids[:, held.single_index(d.item_field)]
    excluded = seen_matrix(d, ("train", "val"))
    n_items = len(d.items.label)
    objective = trainer.objective

    def run(chosen: np.ndarray, protocol: str = "full") -> dict:
        return evaluate_ranking(lambda u: objective.rank_scores(u, "test"), users[chosen], targets[chosen], excluded, n_items,
                                protocol, chunk=objective.users_per_chunk(n_items))

    with torch.no_grad():
        fast_s, fast = timed(lambda: run(np.arange(len(users))))
        sampled_s, _ = timed(lambda: run(np.arange(len(users)), "sampled100"))
        sample = np.arange(min(pair_users, len(users)))
        fast_sample_s, fast_sample = timed(lambda: run(sample))
        model.retrieval = None
        pair_s, pair = timed(lambda: run(sample))
    assert np.isclose(fast_sample["hr@10"], pair["hr@10"]), "the two paths must rank alike"
    per_user_fast, per_user_pair = fast_s / len(users), pair_s / len(sample)
    return {"dataset": dataset, "users": int(len(users)), "items": int(n_items), "pair_users": int(len(sample)),
            "matrix_product_seconds": fast_s, "sampled100_seconds": sampled_s, "per_pair_seconds_measured": pair_s,
            "per_pair_seconds_all_users_extrapolated": per_user_pair * len(users),
            "speedup_per_user": per_user_pair / per_user_fast, "machine": machine_line(), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="amazon-video-games")
    p.add_argument("--pair-users", type=int, default=16)
    p.add_argument("--out", type=Path, nargs="?", const=Path("benchmarks/results"))
    args = p.parse_args(argv)
    try:
        result = measure(args.dataset, args.pair_users)
    except EmbslimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{result['dataset']}: {result['users']:,} users x {result['items']:,} items; full ranking by matrix products "
          f"{result['matrix_product_seconds']:.2f} s (sampled100 protocol {result['sampled100_seconds']:.2f} s); per-pair scoring {result['per_pair_seconds_measured']:.2f} s for "
          f"{result['pair_users']} users, {result['per_pair_seconds_all_users_extrapolated'] / 60:.1f} min for all (extrapolated); "
          f"{result['speedup_per_user']:.0f}x per user; {result['threads']} threads\n{result['machine']}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ranking_eval.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
