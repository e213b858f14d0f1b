"""DNIS inside your own PyTorch model and training loop: no embslim Trainer, models or data loaders.

A plain DeepFM-style model keeps its tables in an `embslim.nn.EmbeddingBagCollection` built with
method="dnis". The loop trains it (alpha = 1: the full model), then searches (one
`search.step(val_batch)` after each training step), prunes the tables in place to a budget,
rebuilds its optimiser and retrains. Runs in under a minute on generated data:

    python examples/dnis_user_loop.py
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

import embslim.nn as enn
from embslim.data import SyntheticConfig, load_dataset
from embslim.search.dnis import DNISConfig


def read_arrays(rows: int) -> dict:
    """Your data as plain arrays: ids [rows, fields] (ranked by frequency), labels, per-id training counts."""
    data = load_dataset("synthetic", "ctr", synthetic=SyntheticConfig(rows=rows, cardinalities=(200, 200, 100, 100, 50, 50),
                                                                       ranks=(8, 6, 4, 2, 1, 0), seed=1))
    splits = {name: (torch.from_numpy(data.split(name).ids).long(), torch.from_numpy(data.split(name).label).float())
              for name in ("train", "val", "test")}
    return {"splits": splits, "names": [f.name for f in data.table.fields],
            "rows": [f.cardinality for f in data.table.fields], "counts": [f.counts for f in data.table.fields]}


class DeepFM(nn.Module):
    """Your model: a linear part, pairwise interactions and an MLP over one vector per field."""

    def __init__(self, names: list[str], rows: list[int], counts: list[np.ndarray], dim: int) -> None:
        super().__init__()
        self.names = names
        self.tables = enn.EmbeddingBagCollection([enn.TableConfig(n, r, dim, counts=c) for n, r, c in zip(names, rows, counts)],
                                                 method="dnis", blocks=4, init_std=0.01)
        width = len(names) * dim
        self.linear = nn.Linear(width, 1)
        self.deep = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        one = torch.ones(len(ids), dtype=torch.long)
        pooled = self.tables({n: {"values": ids[:, i], "lengths": one} for i, n in enumerate(self.names)})
        v = torch.stack([pooled[n] for n in self.names], dim=1)
        pairs = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        flat = v.flatten(1)
        return self.linear(flat).squeeze(1) + pairs + self.deep(flat).squeeze(1)


def batches(x: torch.Tensor, y: torch.Tensor, size: int, rng: np.random.Generator | None = None):
    order = rng.permutation(len(y)) if rng is not None else np.arange(len(y))
    for start in range(0, len(y), size):
        rows = order[start:start + size]
        yield x[rows], y[rows]


def auc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        score = model(x)
    model.train()
    return float(roc_auc_score(y.numpy(), score.numpy()))


def main(rows: int = 60_000, epochs: int = 4, search_epochs: int = 2, retrain_epochs: int = 3, budget: float = 0.25,
         dim: int = 16, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = read_arrays(rows)
    (x, y), (vx, vy), (tx, ty) = data["splits"]["train"], data["splits"]["val"], data["splits"]["test"]
    model = DeepFM(data["names"], data["rows"], data["counts"], dim)

    def loss_fn(batch):  # per-row losses: pruning uses their spread for its confidence bounds
        ids, label = batch
        return F.binary_cross_entropy_with_logits(model(ids), label, reduction="none")

    # 1. The search wraps the model; the optimiser gets everything but the selection layer alpha.
    search = enn.DNISSearch(model, loss_fn, DNISConfig())
    opt = torch.optim.Adam(search.parameters(), lr=5e-3)
    val_stream = iter(())
    for epoch in range(epochs + search_epochs):
        for batch in batches(x, y, 512, rng):
            opt.zero_grad()
            loss_fn(batch).mean().backward()
            opt.step()
            if epoch >= epochs:  # 2. after the warm-up (alpha = 1, the full model): one alpha step per training step
                val_batch = next(val_stream, None)
                if val_batch is None:
                    val_stream = batches(vx, vy, 512, rng)
                    val_batch = next(val_stream)
                search.step(val_batch)
    searched_auc = auc(model, tx, ty)
    # 3. Prune to the budget: the tables become the pruned mixed-dimension tables in place.
    layout = search.prune(budget, list(batches(vx, vy, 8192)))
    pruned_auc = auc(model, tx, ty)
    # 4. Rebuild the optimiser (the tables' parameters changed) and retrain in the same loop.
    opt = torch.optim.Adam(search.parameters(), lr=2e-3)
    for _ in range(retrain_epochs):
        for batch in batches(x, y, 512, rng):
            opt.zero_grad()
            loss_fn(batch).mean().backward()
            opt.step()
    full_bytes = search.full_bytes()
    result = {"full_bytes": full_bytes, "budget_bytes": search.budget_bytes, "bytes": search.memory_bytes(),
              "searched_auc": searched_auc, "pruned_auc": pruned_auc, "auc": auc(model, tx, ty), "layout": layout,
              "kept_dims": {name: [len(b["dims"]) for b in f["blocks"]] for name, f in layout["fields"].items()}}
    print(f"full tables {full_bytes:,} bytes (fp32), test AUC after the search {searched_auc:.4f}")
    print("kept dims per block (most frequent first):", result["kept_dims"])
    print(f"pruned tables {result['bytes']:,} bytes (budget {result['budget_bytes']:,}), test AUC pruned {pruned_auc:.4f}, "
          f"after retraining {result['auc']:.4f}")
    return result


if __name__ == "__main__":
    main()
