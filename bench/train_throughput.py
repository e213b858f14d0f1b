"""Training throughput of DeepFM through embslim's trainer against plain nn.EmbeddingBag loops, in one run.

Criteo-shaped generated data: 26 fields of 100,000 ids (Zipf), dim 16, batch 4096, MLP 256-128.
Baselines share the MLP and step: per-field nn.EmbeddingBag with dense gradients + Adam, and with
sparse gradients + SparseAdam. embslim's DeepFM is timed with each table optimizer (`--table-optimizer`;
`embslim_deepfm_full` is the default, lazy Adam). Figures are samples/s and ratios to the dense baseline measured in
the same process (the machine is shared, so absolute numbers drift).

    python bench/train_throughput.py [--steps 30] [--out benchmarks/results/train_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FeatureTable, FieldSpec, PreparedData
from embslim.data.synthetic import zipf_ids
from embslim.embeddings import EmbeddingConfig
from embslim.models import ModelOptions
from embslim.train.run import RunConfig, build_model
from embslim.train.table_optim import TABLE_OPTIMIZERS
from embslim.train.trainer import TrainConfig, Trainer

FIELDS, ROWS, DIM, BATCH = 26, 100_000, 16, 4096


def criteo_shaped(n: int, seed: int = 0) -> PreparedData:
    rng = np.random.default_rng(seed)
    ids = np.stack([zipf_ids(rng, ROWS, n, 1.05) for _ in range(FIELDS)], axis=1)
    fields = [FieldSpec(f"C{i}", ROWS, np.bincount(ids[:, i], minlength=ROWS)) for i in range(FIELDS)]
    label = (rng.random(n) < 0.25).astype(np.float32)
    table = FeatureTable(fields, ids, {}, label)
    rows = np.arange(n)
    return PreparedData("criteo-shaped", "ctr", table, {"train": rows, "val": rows[:BATCH], "test": rows[:BATCH]})


class PlainDeepFM(nn.Module):
    """The same DeepFM on one nn.EmbeddingBag per field, as a user would write it."""

    def __init__(self, sparse: bool) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(ROWS, DIM, mode="sum", sparse=sparse) for _ in range(FIELDS))
        self.linear = nn.Linear(FIELDS * DIM, 1)
        self.deep = nn.Sequential(nn.Linear(FIELDS * DIM, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = torch.stack([t(ids[:, i : i + 1]) for i, t in enumerate(self.tables)], dim=1)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        flat = v.flatten(1)
        return self.linear(flat).squeeze(1) + fm + self.deep(flat).squeeze(1)


def time_plain(data: PreparedData, sparse: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = PlainDeepFM(sparse)
    tables = list(model.tables.parameters())
    dense = [p for n, p in model.named_parameters() if not n.startswith("tables")]
    opts = [torch.optim.Adam(dense, lr=1e-3), torch.optim.SparseAdam(tables, lr=1e-3) if sparse else torch.optim.Adam(tables, lr=1e-3)]
    ids = torch.from_numpy(data.table.ids)
    label = torch.from_numpy(data.table.label)
    start = None
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        s = (step * BATCH) % (len(label) - BATCH)
        loss = F.binary_cross_entropy_with_logits(model(ids[s : s + BATCH]), label[s : s + BATCH])
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
    return steps * BATCH / (time.perf_counter() - start)


def time_embslim(data: PreparedData, steps: int, table_optimizer: str = "adam") -> float:
    train = TrainConfig(batch_size=BATCH, progress=False, table_optimizer=table_optimizer, table_lr=None if table_optimizer == "adam" else 0.01)
    config = RunConfig("deepfm", EmbeddingConfig(dim=DIM), ModelOptions(hidden=(256, 128)), train)
    model, data = build_model(data, config)
    trainer = Trainer(model, data, config.train)
    batches = trainer.objective.batches(0)
    start = None
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        loss = trainer.loss(next(batches))
        for o in trainer.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in trainer.optimizers:
            o.step()
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args()
    data = criteo_shaped(BATCH * (args.steps + 4))
    results = {
        "plain_embeddingbag_dense": time_plain(data, sparse=False, steps=args.steps),
        "plain_embeddingbag_sparse": time_plain(data, sparse=True, steps=args.steps),
        "embslim_deepfm_full": time_embslim(data, args.steps),
        **{f"embslim_deepfm_full_{kind}": time_embslim(data, args.steps, kind) for kind in TABLE_OPTIMIZERS if kind != "adam"},
    }
    base = results["plain_embeddingbag_dense"]
    for name, sps in results.items():
        print(f"{name:<28} {sps:>10,.0f} samples/s   x{sps / base:.2f} vs dense nn.EmbeddingBag")
    record = {"samples_per_second": results, "ratio_to_dense": {k: v / base for k, v in results.items()},
              "setup": {"fields": FIELDS, "rows_per_field": ROWS, "dim": DIM, "batch": BATCH, "steps": args.steps},
              "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
