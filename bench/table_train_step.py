"""Training step of the tables alone: embslim `full` with pure-PyTorch optimisers against FBGEMM's fused kernel, in one run.

Criteo-shaped: 26 single-valued fields of 100,000 ids, dim 16, batch 4096, ids Zipf-distributed (or uniform).
A step is the lookup of every field, the backward of the sum of the vectors and the table update:

- `embslim_full_<opt>`: embslim `full` (one concatenated table, sparse gradient) and the pure-PyTorch optimiser
  (`--table-optimizer <opt>`: rowwise-adagrad, adagrad, sgd);
- `fbgemm_tbe_<opt>`: FBGEMM's CPU table-batched kernel as a user would call it (one table per field, ids laid
  out feature-major before timing), EXACT_<OPT> fused into the backward;
- `embslim_full_fbgemm_<opt>`: embslim `full` with `--table-optimizer fbgemm-<opt>` (the same kernel holding the
  embslim table's memory, one table per width).

The contenders are timed in turn, `--repeats` times (the order rotating each round), `--steps` steps each after
one warm-up step; samples/s is the median over the rounds and each ratio is the median of the per-round ratios
to `embslim_full_rowwise-adagrad` (the pure-PyTorch baseline) and, for the embslim contenders, to FBGEMM's TBE
with the same optimiser (with the lowest and highest round). The machine is shared, so only the ratios mean
anything. Needs fbgemm-gpu-cpu (`make torchrec`).

    OMP_NUM_THREADS=1 python bench/table_train_step.py [--steps 20] [--repeats 7] [--ids zipf] [--optimizers rowwise-adagrad,adagrad,sgd] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from embslim.bench.report import machine_line
from embslim.data.fields import FieldSpec
from embslim.data.synthetic import zipf_ids
from embslim.embeddings import EmbeddingConfig, SparseBatch, create_embedding
from embslim.train.table_optim import make_table_optimizer

FIELDS, ROWS, DIM, BATCH, BATCHES = 26, 100_000, 16, 4096, 4
LR = {"rowwise-adagrad": 0.01, "adagrad": 0.01, "sgd": 0.1}
FBGEMM_NAME = {"rowwise-adagrad": "EXACT_ROWWISE_ADAGRAD", "adagrad": "EXACT_ADAGRAD", "sgd": "EXACT_SGD"}
BASELINE = "embslim_full_rowwise-adagrad"


def criteo_shaped(ids: str, seed: int = 0) -> tuple[list[FieldSpec], list[torch.Tensor]]:
    """Fields with Zipf counts and a few [BATCH, FIELDS] id batches, cycled through."""
    rng = np.random.default_rng(seed)
    zipf = np.stack([zipf_ids(rng, ROWS, BATCH * BATCHES, 1.05) for _ in range(FIELDS)], axis=1)
    fields = [FieldSpec(f"C{i}", ROWS, np.bincount(zipf[:, i], minlength=ROWS)) for i in range(FIELDS)]
    chosen = zipf if ids == "zipf" else rng.integers(0, ROWS, size=zipf.shape)
    return fields, [torch.from_numpy(chosen[k * BATCH:(k + 1) * BATCH]) for k in range(BATCHES)]


def embslim_step(fields: list[FieldSpec], batches: list[torch.Tensor], kind: str) -> Callable[[int], None]:
    """One table step of embslim `full` with table optimiser `kind` (fbgemm-* kinds: through the fused kernel)."""
    torch.manual_seed(0)
    emb = create_embedding(fields, EmbeddingConfig("full", dim=DIM)).train()
    opt = make_table_optimizer(kind, emb.sparse_parameters(), LR[kind.removeprefix("fbgemm-")], emb)
    sparse = [SparseBatch(ids, {}, torch.zeros(BATCH)) for ids in batches]

    def step(k: int) -> None:
        opt.zero_grad(set_to_none=True)
        sum(v.sum() for v in emb(sparse[k % len(sparse)])).backward()
        opt.step()
    return step


def fbgemm_step(batches: list[torch.Tensor], kind: str) -> Callable[[int], None]:
    """One step of FBGEMM's CPU TBE over one table per field, the update fused into its backward."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen

    tbe = SplitTableBatchedEmbeddingBagsCodegen([(ROWS, DIM, EmbeddingLocation.HOST, ComputeDevice.CPU)] * FIELDS,
                                                optimizer=getattr(EmbOptimType, FBGEMM_NAME[kind]), learning_rate=LR[kind],
                                                eps=1e-10 if kind == "adagrad" else 1e-8, pooling_mode=PoolingMode.SUM, device="cpu")
    indices = [ids.t().contiguous().reshape(-1) for ids in batches]  # TBE's layout: feature-major, one bag per (field, row)
    offsets = torch.arange(FIELDS * BATCH + 1, dtype=torch.int64)

    def step(k: int) -> None:
        tbe(indices[k % len(indices)], offsets).sum().backward()
    return step


def samples_per_second(step: Callable[[int], None], steps: int) -> float:
    step(0)
    start = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    return steps * BATCH / (time.perf_counter() - start)


def per_round(ours: list[float], theirs: list[float]) -> dict[str, float]:
    """Median, lowest and highest of the per-round ratios ours/theirs (each round times both back to back)."""
    r = [a / b for a, b in zip(ours, theirs)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contender and round (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; each contender is timed once per round, order rotating")
    parser.add_argument("--ids", choices=["zipf", "uniform"], default="zipf")
    parser.add_argument("--optimizers", default="rowwise-adagrad", help="comma-separated: rowwise-adagrad, adagrad, sgd")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here")
    args = parser.parse_args()
    fields, batches = criteo_shaped(args.ids)
    contenders: dict[str, Callable[[int], None]] = {}
    for kind in ["rowwise-adagrad"] + [k for k in args.optimizers.split(",") if k != "rowwise-adagrad"]:
        contenders[f"embslim_full_{kind}"] = embslim_step(fields, batches, kind)
        contenders[f"fbgemm_tbe_{kind}"] = fbgemm_step(batches, kind)
        contenders[f"embslim_full_fbgemm_{kind}"] = embslim_step(fields, batches, f"fbgemm-{kind}")
    names = list(contenders)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            rates[n].append(samples_per_second(contenders[n], args.steps))
    ratios = {n: statistics.median(a / b for a, b in zip(rates[n], rates[BASELINE])) for n in names}
    versus_tbe = {n: per_round(rates[n], rates[f"fbgemm_tbe_{n.rsplit('_', 1)[1]}"]) for n in names if not n.startswith("fbgemm_tbe")}
    record = {"date": time.strftime("%Y-%m-%d"), "machine": machine_line(), "threads": torch.get_num_threads(),
              "load_average_1_5_15min_at_end": os.getloadavg(),
              "command": " ".join(["python bench/table_train_step.py"] + sys.argv[1:]),
              "setup": {"fields": FIELDS, "rows_per_field": ROWS, "dim": DIM, "batch": BATCH, "ids": args.ids,
                        "steps": args.steps, "repeats": args.repeats, "lr": LR, "baseline": BASELINE},
              "samples_per_second_median": {n: statistics.median(v) for n, v in rates.items()},
              "ratio_to_baseline_median": ratios, "ratio_to_fbgemm_tbe_same_optimizer": versus_tbe, "samples_per_second_rounds": rates}
    for n in names:
        vs = versus_tbe.get(n)
        print(f"{n:<40} {record['samples_per_second_median'][n]:>10,.0f} samples/s   x{ratios[n]:.2f} vs {BASELINE}"
              + (f"   x{vs['median']:.2f} (rounds {vs['min']:.2f}-{vs['max']:.2f}) vs FBGEMM's TBE, same optimiser" if vs else ""))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
