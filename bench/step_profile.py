"""DeepFM's whole training step, today's against the original one, end to end in one run (issue 13, "The dense part").

Criteo-shaped generated data with a planted signal (26 fields of up to 100,000 Zipf ids, ranks as in
synthetic-criteo), dim 16, batch 4096, MLP 256-128, the trainer's own epoch loop (batch assembly, hooks, losses,
both optimisers). The contenders train side by side from the same initial weights on the same batches:

- `original`: the step as it was before the speed-up: the per-field vector list (split, concatenated twice and
  stacked again by the backbone) and torch's SparseAdam for the tables;
- `current`: the trainer as it is (default fp32);
- `current_bf16`: the trainer with `dense_precision="bf16"` (`--dense-precision bf16`: bfloat16 autocast forward);
- `current_bf16_bits`: that, with the MLP's dropout masks drawn as integers (`--dropout-mask bits`);
- `per_field`: the trainer as it is, but the backbone fed the per-field vector list instead of one [B, F, d] tensor
  (what the stacked path alone is worth, same optimiser);
- `current_bf16_bits_rowwise`: `current_bf16_bits` with the tables on row-wise Adagrad (`--table-optimizer
  rowwise-adagrad --table-lr 0.03`: one float of state per row, what production CTR training uses);
- `current_bf16_bits_fbgemm`: the same optimiser through FBGEMM's fused table-batched kernel
  (`--table-optimizer fbgemm-rowwise-adagrad`; needs fbgemm-gpu-cpu).

`--model` picks another CTR backbone (lr, fm, dcnv2, autoint); `--contenders` a subset (`original` always runs:
every ratio is against it).

Rounds rotate which goes first; each round is one epoch of each. samples/s are medians over rounds and the
ratio is the median of the per-round ratios (the machine is shared, so only the ratio means much). After the last
round both models' test AUC is reported (each trained `--rounds` epochs: same data, same order, same dropout draws as
an uninterrupted run of its own). `--profile` also prints where one step of each spends its time.

    OMP_NUM_THREADS=1 python bench/step_profile.py [--rows 300000] [--rounds 5] [--out benchmarks/results/step_profile.json]
    OMP_NUM_THREADS=1 python bench/step_profile.py --model dcnv2 --contenders current,per_field
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from embslim.data.registry import load_dataset
from embslim.data.synthetic import CRITEO_RANKS, SyntheticConfig
from embslim.embeddings import EmbeddingConfig
from embslim.models import ModelOptions
from embslim.train.run import RunConfig, build_model
from embslim.train.trainer import TrainConfig, Trainer

FIELDS, ROWS, DIM, BATCH = 26, 100_000, 16, 4096


class Contender:
    """One trainer with its own RNG stream, so interleaving rounds does not change what either computes."""

    def __init__(self, name: str, data, config: RunConfig, original: bool, per_field: bool = False) -> None:
        model, prepared = build_model(data, config)
        self.name, self.trainer = name, Trainer(model, prepared, config.train)
        if original or per_field:
            model.embedding.stacked = lambda batch: None
        if original:
            tables = model.embedding.sparse_parameters()
            self.trainer.optimizers[1] = torch.optim.SparseAdam(tables, lr=config.train.table_lr or config.train.lr)
        torch.manual_seed(config.train.seed)
        self.rng = torch.get_rng_state()
        self.epoch, self.rates, self.losses = 0, [], []

    def run_epoch(self) -> float:
        torch.set_rng_state(self.rng)
        start = time.perf_counter()
        loss, rows = self.trainer.train_epoch(self.epoch)
        seconds = time.perf_counter() - start
        self.rng = torch.get_rng_state()
        self.epoch += 1
        self.losses.append(loss)
        self.rates.append(rows / seconds)
        return rows / seconds


def profile_step(contender: Contender) -> str:
    """The top operators of one training step (torch.profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = contender.trainer
    trainer.model.train()
    batch = next(iter(trainer.objective.batches(0)))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step(batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--zipf", type=float, default=1.05, help="exponent of the ids' Zipf law")
    parser.add_argument("--model", default="deepfm", help="CTR backbone (default deepfm)")
    parser.add_argument("--contenders", default="current,current_bf16,current_bf16_bits,per_field",
                        help="which to run beside `original` (comma-separated)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    shape = SyntheticConfig(rows=args.rows, cardinalities=(ROWS,) * FIELDS, ranks=CRITEO_RANKS, zipf=args.zipf)
    data = load_dataset("synthetic", "ctr", synthetic=shape)
    config = RunConfig(args.model, EmbeddingConfig(dim=DIM), ModelOptions(hidden=(256, 128)),
                       TrainConfig(batch_size=BATCH, progress=False, epochs=args.rounds))
    bf16 = replace(config, train=replace(config.train, dense_precision="bf16"))
    builders = {
        "current": lambda: Contender("current", data, config, original=False),
        "current_bf16": lambda: Contender("current_bf16", data, bf16, original=False),
        "current_bf16_bits": lambda: Contender("current_bf16_bits", data, replace(bf16, model_options=replace(config.model_options, dropout_mask="bits")), original=False),
        "per_field": lambda: Contender("per_field", data, config, original=False, per_field=True),
    }
    bits = replace(bf16, model_options=replace(config.model_options, dropout_mask="bits"))
    for name, kind in (("current_bf16_bits_rowwise", "rowwise-adagrad"), ("current_bf16_bits_fbgemm", "fbgemm-rowwise-adagrad")):
        tables = replace(bits, train=replace(bits.train, table_optimizer=kind, table_lr=0.03))
        builders[name] = lambda name=name, tables=tables: Contender(name, data, tables, original=False)
    chosen = [c for c in args.contenders.split(",") if c]
    unknown = sorted(set(chosen) - set(builders))
    if unknown:
        parser.error(f"unknown contenders {unknown}; known: {sorted(builders)}")
    contenders = [Contender("original", data, config, original=True)] + [builders[c]() for c in chosen]
    ratios: dict[str, list[float]] = {c.name: [] for c in contenders[1:]}
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        rates = {c.name: c.run_epoch() for c in order}
        for name in ratios:
            ratios[name].append(rates[name] / rates["original"])
        print(f"round {r + 1}: " + "  ".join(f"{k} {v:,.0f} samples/s" for k, v in rates.items()))
    auc = {c.name: c.trainer.evaluate("test")["auc"] for c in contenders}
    record = {
        "samples_per_second_median": {c.name: statistics.median(c.rates) for c in contenders},
        "ratio_to_original_median": {name: statistics.median(r) for name, r in ratios.items()},
        "ratio_to_original_per_round": ratios,
        "test_auc_after_rounds": auc,
        "train_loss_per_epoch": {c.name: c.losses for c in contenders},
        "setup": {"model": args.model, "fields": FIELDS, "ids_per_field": ROWS, "dim": DIM, "batch": BATCH, "mlp": [256, 128], "rows": args.rows,
                  "train_rows": len(contenders[0].trainer.data.split("train")), "rounds": args.rounds,
                  "torch_threads": torch.get_num_threads()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__}, "date": time.strftime("%Y-%m-%d"),
    }
    print("median ratio to original: " + ", ".join(f"{k} {v:.2f}" for k, v in record["ratio_to_original_median"].items()) + "; test AUC "
          + ", ".join(f"{k} {v:.4f}" for k, v in auc.items()))
    if args.profile:
        for c in contenders:
            print(f"\n{c.name}: one step\n{profile_step(c)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
