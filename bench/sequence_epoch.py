"""Cost of one SASRec epoch and one validation pass on a sequence dataset: every batch padded to maxlen
(the original path) against batches that read only their longest history's columns, with and without
length-grouped batches (`--length-batches`).

Most histories are far shorter than maxlen (Video Games: a mean of 5.9 training positions of 50), so a
batch of random users is mostly padding; trimming alone saves little (a random batch of 128 almost always
holds one long history), grouping users of similar length saves most of it. Figures are seconds per epoch
(one pass over the users, forward, backward and optimiser step) and the ratio to the padded path, measured
in the same process on the same model settings; validation is timed once per protocol.

    python bench/sequence_epoch.py [--dataset amazon-video-games] [--dim 50] [--batch-size 128] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from embslim.bench.report import emit_json, machine_line
from embslim.data import load_dataset
from embslim.embeddings import EmbeddingConfig
from embslim.models import ModelOptions
from embslim.train.objective_sequence import SequenceBatch
from embslim.train.run import RunConfig, build_model
from embslim.train.trainer import TrainConfig, Trainer


def padded(batch: SequenceBatch, maxlen: int) -> SequenceBatch:
    """The batch left-padded to maxlen columns, as every batch was before trimming."""
    extra = maxlen - batch.inputs.shape[1]
    pad = lambda t: torch.cat([torch.full((len(t), extra), -1, dtype=t.dtype), t], dim=1)  # noqa: E731
    negatives = pad(batch.negatives) if batch.negatives.dim() == 2 else batch.negatives
    times = None if batch.times is None else (pad(batch.times[0]), pad(batch.times[1]))
    return SequenceBatch(pad(batch.inputs), pad(batch.targets), negatives, times)


def epoch_seconds(trainer: Trainer, pad_to: int | None) -> tuple[float, int]:
    """Seconds of one training epoch (batches built outside the timer), and its number of steps."""
    trainer.model.train()
    seconds, steps = 0.0, 0
    for batch in trainer.objective.batches(0):
        if pad_to:
            batch = padded(batch, pad_to)
        start = time.perf_counter()
        trainer.train_step(batch)
        seconds += time.perf_counter() - start
        steps += 1
    return seconds, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-video-games")
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--maxlen", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = load_dataset(args.dataset, "topk")
    options = ModelOptions(heads=1, blocks=2, dropout=0.5, maxlen=args.maxlen)
    out: dict = {"dataset": args.dataset, "dim": args.dim, "maxlen": args.maxlen, "batch_size": args.batch_size,
                 "machine": machine_line()}
    for name, grouped, pad_to in (("padded", False, args.maxlen), ("trimmed", False, None), ("length_batches", True, None)):
        train = TrainConfig(batch_size=args.batch_size, progress=False, length_batches=grouped, seed=0)
        model, d = build_model(data, RunConfig("sasrec", EmbeddingConfig(dim=args.dim), options, train))
        seconds, steps = epoch_seconds(Trainer(model, d, train), pad_to)
        out[f"{name}_epoch_seconds"] = seconds
        out["steps_per_epoch"] = steps
    for name in ("trimmed", "length_batches"):
        out[f"{name}_speedup"] = out["padded_epoch_seconds"] / out[f"{name}_epoch_seconds"]
    for protocol in ("full", "sampled100"):
        train = TrainConfig(batch_size=args.batch_size, progress=False, eval_protocol=protocol)
        model, d = build_model(data, RunConfig("sasrec", EmbeddingConfig(dim=args.dim), options, train))
        trainer = Trainer(model, d, train)
        start = time.perf_counter()
        trainer.evaluate("val")
        out[f"validation_{protocol}_seconds"] = time.perf_counter() - start
    out["validation_users"] = int(len(data.splits["val"]))
    emit_json(out, args.out)


if __name__ == "__main__":
    main()
