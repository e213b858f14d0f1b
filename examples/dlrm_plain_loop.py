"""A DLRM-style CTR model in plain PyTorch on Criteo rows: its own data pipeline, model and Adam loop.

Its tables are `torch.nn.EmbeddingBag`s; switching them to an embslim method is one argument,
`--method`, which changes the one line that builds a table (`make_table` below):

    python examples/dlrm_plain_loop.py --data ../shared/data/criteo-dac-head10k/train_head10k.txt --method torch
    python examples/dlrm_plain_loop.py --data ... --method qr --budget 0.1
    python examples/dlrm_plain_loop.py --data ... --method mde --budget 0.1
    python examples/dlrm_plain_loop.py --data ... --method int8

Without `--data` it reads `$EMBSLIM_DATA_DIR/criteo-dac-head10k/train_head10k.txt`. Prints test AUC and the
bytes of all tables (what serving them takes).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

import embslim.nn

DENSE, SPARSE, DIM = 13, 26, 16


def read_criteo(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Labels, log-scaled integer features and raw categorical strings of a Criteo TSV."""
    labels, dense, cats = [], [], []
    for line in path.read_text().splitlines():
        cols = line.split("\t")
        labels.append(float(cols[0]))
        dense.append([np.log1p(max(float(c), 0.0)) if c else 0.0 for c in cols[1:1 + DENSE]])
        cats.append(cols[1 + DENSE:1 + DENSE + SPARSE])
    return np.array(labels, dtype=np.float32), np.array(dense, dtype=np.float32), cats


def encode(cats: list[list[str]], train: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ids per column from the training rows' values (id 0: unseen or empty), and each id's training count."""
    ids = np.zeros((len(cats), SPARSE), dtype=np.int64)
    counts = []
    for j in range(SPARSE):
        vocab: dict[str, int] = {}
        for i in train:
            value = cats[i][j]
            if value and value not in vocab:
                vocab[value] = len(vocab) + 1
        ids[:, j] = [vocab.get(row[j], 0) for row in cats]
        counts.append(np.bincount(ids[train, j], minlength=len(vocab) + 1))
    return ids, counts


class DLRM(nn.Module):
    """Bottom MLP on dense features, one pooled table per categorical feature, pairwise dot interactions, top MLP."""

    def __init__(self, make_table, rows: list[int]) -> None:
        super().__init__()
        self.tables = nn.ModuleList([make_table(j, n) for j, n in enumerate(rows)])
        self.bottom = nn.Sequential(nn.Linear(DENSE, 64), nn.ReLU(), nn.Linear(64, DIM), nn.ReLU())
        pairs = (SPARSE + 1) * SPARSE // 2
        self.top = nn.Sequential(nn.Linear(DIM + pairs, 64), nn.ReLU(), nn.Linear(64, 1))
        self.upper = torch.triu_indices(SPARSE + 1, SPARSE + 1, offset=1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        starts = torch.arange(len(ids))
        vectors = torch.stack([x] + [table(ids[:, j], starts) for j, table in enumerate(self.tables)], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))[:, self.upper[0], self.upper[1]]
        return self.top(torch.cat([x, dots], dim=1)).squeeze(1)


SMALL = 1000  # tables this small stay full: a tenth of them is below the index some methods need


def table_maker(method: str, budget: float | None, counts: list[np.ndarray], total_steps: int):
    """The one line a user changes: torch's table, or embslim's with a method and a budget (large tables)."""
    def make(j: int, n: int) -> nn.Module:
        if method == "torch" or n <= SMALL:
            return nn.EmbeddingBag(n, DIM, mode="sum")
        return embslim.nn.EmbeddingBag(n, DIM, mode="sum", method=method, budget_bytes=budget, counts=counts[j], total_steps=total_steps)
    return make


def table_bytes(model: DLRM) -> int:
    return sum(t.memory_bytes() if hasattr(t, "memory_bytes") else t.weight.numel() * 4 for t in model.tables)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EMBSLIM_DATA_DIR", "data")) / "criteo-dac-head10k" / "train_head10k.txt")
    parser.add_argument("--method", default="torch", help="torch, or an embslim method (full, qr, mde, int8, hash, ...)")
    parser.add_argument("--budget", type=float, default=None, help="fraction of each fp32 table's bytes")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"no Criteo file at {args.data}: pass --data or set EMBSLIM_DATA_DIR")
    torch.manual_seed(args.seed)
    labels, dense, cats = read_criteo(args.data)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    train, test = order[:int(0.8 * len(order))], order[int(0.8 * len(order)):]
    ids, counts = encode(cats, train)
    steps = args.epochs * -(-len(train) // args.batch_size)
    model = DLRM(table_maker(args.method, args.budget, counts, steps), [len(c) for c in counts])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tensors = [torch.from_numpy(a) for a in (dense, ids, labels)]
    for epoch in range(args.epochs):
        model.train()
        shuffled = torch.from_numpy(np.random.default_rng([args.seed, epoch]).permutation(train))
        for start in range(0, len(train), args.batch_size):
            rows = shuffled[start:start + args.batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(model(tensors[0][rows], tensors[1][rows]), tensors[2][rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = model(tensors[0][test], tensors[1][test]).numpy()
    result = {"method": args.method, "auc": float(roc_auc_score(labels[test], scores)), "bytes": table_bytes(model),
              "full_bytes": sum(len(c) for c in counts) * DIM * 4}
    print(f"{args.method}: test AUC {result['auc']:.4f}, tables {result['bytes']:,} bytes "
          f"({result['bytes'] / result['full_bytes']:.1%} of fp32)")
    return result


if __name__ == "__main__":
    main()
