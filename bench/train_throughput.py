"""Training throughput of DeepFM through embslim's trainer against plain nn.EmbeddingBag loops, in one run.

Criteo-shaped generated data: 26 fields of 100,000 ids (Zipf), dim 16, batch 4096, MLP 256-128.
Baselines share the MLP and step: per-field nn.EmbeddingBag with dense gradients + Adam, and with
sparse gradients + SparseAdam. embslim's DeepFM is timed with each table optimizer (`--table-optimizer`;
`embslim_deepfm_full` is the default, lazy Adam). Each round runs `--steps` steps of every contender, the order
rotating between rounds; figures are median samples/s and the median of the per-round ratios to the dense baseline
(the machine is shared, so absolute numbers drift and only ratios within a round mean much).

    python bench/train_throughput.py [--steps 30] [--rounds 3] [--out benchmarks/results/train_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
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


class Contender:
    """One training loop kept alive across rounds: `run(steps)` times `steps` more steps of it (samples/s)."""

    def __init__(self, name: str, step) -> None:
        self.name, self.step, self.done, self.rates = name, step, 0, []

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step(self.done)
            self.done += 1
        rate = steps * BATCH / (time.perf_counter() - start)
        self.rates.append(rate)
        return rate


def plain(data: PreparedData, sparse: bool) -> Contender:
    torch.manual_seed(0)
    model = PlainDeepFM(sparse)
    tables = list(model.tables.parameters())
    dense = [p for n, p in model.named_parameters() if not n.startswith("tables")]
    opts = [torch.optim.Adam(dense, lr=1e-3), torch.optim.SparseAdam(tables, lr=1e-3) if sparse else torch.optim.Adam(tables, lr=1e-3)]
    ids = torch.from_numpy(data.table.ids)
    label = torch.from_numpy(data.table.label)

    def step(i: int) -> None:
        s = (i * BATCH) % (len(label) - BATCH)
        loss = F.binary_cross_entropy_with_logits(model(ids[s : s + BATCH]), label[s : s + BATCH])
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()

    return Contender(f"plain_embeddingbag_{'sparse' if sparse else 'dense'}", step)


def embslim(data: PreparedData, table_optimizer: str = "adam") -> Contender:
    train = TrainConfig(batch_size=BATCH, progress=False, table_optimizer=table_optimizer, table_lr=None if table_optimizer == "adam" else 0.01)
    config = RunConfig("deepfm", EmbeddingConfig(dim=DIM), ModelOptions(hidden=(256, 128)), train)
    model, data = build_model(data, config)
    trainer = Trainer(model, data, config.train)
    batches = iter(())
    epoch = 0

    def step(i: int) -> None:
        nonlocal batches, epoch
        batch = next(batches, None)
        if batch is None:
            batches, epoch = trainer.objective.batches(epoch), epoch + 1
            batch = next(batches)
        loss = trainer.loss(batch)
        for o in trainer.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in trainer.optimizers:
            o.step()

    return Contender("embslim_deepfm_full" + ("" if table_optimizer == "adam" else f"_{table_optimizer}"), step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps of each contender per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args()
    data = criteo_shaped(BATCH * (args.steps + 4))
    contenders = [plain(data, sparse=False), plain(data, sparse=True), embslim(data),
                  *(embslim(data, kind) for kind in TABLE_OPTIMIZERS if kind != "adam")]
    for c in contenders:
        c.run(2)  # warm-up, not kept
        c.rates.clear()
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            c.run(args.steps)
        print(f"round {r + 1}: " + "  ".join(f"{c.name} {c.rates[-1]:,.0f}" for c in order), flush=True)
    base = contenders[0]
    per_round = {c.name: [a / b for a, b in zip(c.rates, base.rates)] for c in contenders}
    results = {c.name: statistics.median(c.rates) for c in contenders}
    ratios = {name: statistics.median(v) for name, v in per_round.items()}
    for c in contenders:
        print(f"{c.name:<36} {results[c.name]:>10,.0f} samples/s   x{ratios[c.name]:.2f} vs dense nn.EmbeddingBag (median of per-round ratios)")
    record = {"samples_per_second_median": results, "ratio_to_dense_median": ratios, "ratio_to_dense_per_round": per_round,
              "setup": {"fields": FIELDS, "rows_per_field": ROWS, "dim": DIM, "batch": BATCH, "steps_per_round": args.steps,
                        "rounds": args.rounds},
              "machine": {"torch_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
