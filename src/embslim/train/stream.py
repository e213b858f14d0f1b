"""One epoch over a stream, chunk by chunk, in bounded memory (`embslim train --stream`).

A counting pass builds the vocabularies (embslim.data.stream); the model is built on them;
a second pass encodes each training chunk and trains on it (shuffled within the chunk),
keeping only the held-out tail (validation, then test) in memory. Memory is the model, one
chunk and the tail, whatever the stream's length. Pointwise CTR backbones only.
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from embslim.data.fields import FeatureTable, PreparedData
from embslim.data.stream import StreamConfig, StreamPlan, StreamSource, count_pass, encode_chunk, split_pass
from embslim.embeddings import method_info
from embslim.errors import ConfigError
from embslim.train.run import RunConfig, build_model, describe_embedding, environment, model_data, write_results
from embslim.train.trainer import Trainer


class StreamTrainer(Trainer):
    """A trainer whose data is swapped chunk by chunk; schedules see the whole stream's steps."""

    total_steps = 1

    def step_context(self):
        from embslim.embeddings.base import StepContext

        return StepContext(self.step, self.total_steps, self.optimizers)

    def use(self, data: PreparedData) -> None:
        from embslim.train.objectives import create_objective

        self.data = data
        self.objective = create_objective(self.model, data, self.config)


def chunk_data(name: str, plan: StreamPlan, ids: np.ndarray, label: np.ndarray, splits: dict[str, np.ndarray] | None = None) -> PreparedData:
    table = FeatureTable(plan.fields, ids, {}, label)
    every = np.arange(len(label))
    return PreparedData(name, "ctr", table, splits or {"train": every, "val": every, "test": every})


def skeleton(name: str, plan: StreamPlan) -> PreparedData:
    """The stream's fields with no rows: what building a model and sizing a budget need."""
    return chunk_data(name, plan, np.zeros((0, len(plan.fields)), dtype=np.int64), np.zeros(0, dtype=np.float32))


def run_stream(source: StreamSource, stream: StreamConfig, config: RunConfig, out_dir: Path | None = None,
               plan: StreamPlan | None = None) -> dict:
    """Count (unless `plan` is given), build, train one epoch over the training rows, evaluate on the tail; the results record."""
    if config.train.epochs != 1:
        raise ConfigError("--stream trains one epoch over the stream; leave --epochs at 1")
    if method_info(config.embedding.method).source == "trained":
        raise ConfigError(f"--stream trains from scratch; {config.embedding.method!r} converts a trained table (not streamable yet)")
    t0 = time.perf_counter() - (plan.count_seconds if plan is not None else 0.0)
    plan = plan or count_pass(source, stream)
    model, _ = build_model(skeleton(source.name, plan), config)
    if getattr(model, "objective", "pointwise") != "pointwise" or config.train.pair_loss:
        raise ConfigError(f"--stream trains pointwise CTR backbones, not {config.model!r}")
    trainer: StreamTrainer | None = None
    val_parts: list[tuple[np.ndarray, np.ndarray]] = []
    test_parts: list[tuple[np.ndarray, np.ndarray]] = []
    train_time, samples, losses, encode_time = 0.0, 0, [], 0.0
    for index, (split, chunk) in enumerate(split_pass(source, plan)):
        e0 = time.perf_counter()
        ids = encode_chunk(plan, chunk)
        encode_time += time.perf_counter() - e0
        if split != "train":
            (val_parts if split == "val" else test_parts).append((ids, chunk.label))
            continue
        data = model_data(chunk_data(source.name, plan, ids, chunk.label), config.model)
        if trainer is None:
            trainer = StreamTrainer(model, data, config.train, None)
            trainer.total_steps = -(-plan.train_rows // config.train.batch_size)
        trainer.use(data)
        s0 = time.perf_counter()
        loss, n = trainer.train_epoch(index)
        train_time += time.perf_counter() - s0
        samples += n
        losses.append((loss, n))
    if trainer is None:
        raise ConfigError("the stream has no training rows")
    val_ids, val_label = (np.concatenate(x) for x in zip(*val_parts))
    test_ids, test_label = (np.concatenate(x) for x in zip(*test_parts))
    n_val = len(val_label)
    held = chunk_data(source.name, plan, np.concatenate([val_ids, test_ids]), np.concatenate([val_label, test_label]),
                      {"train": np.arange(n_val), "val": np.arange(n_val), "test": np.arange(n_val, n_val + len(test_label))})
    trainer.use(model_data(held, config.model))
    val, test = trainer.evaluate("val"), trainer.evaluate("test")
    wall = time.perf_counter() - t0
    report = source.report.as_dict() if source.report is not None else None
    results = {
        "config": {"dataset": source.name, "task": "ctr", "stream": asdict(stream), **json.loads(json.dumps(asdict(config), default=str))},
        "data": {"rows": {"stream": plan.rows, "train": plan.train_rows, "val": plan.eval_rows, "test": plan.eval_rows},
                 "split": "tail: validation then test are the last rows of the stream, after every training row",
                 "fields": {f.name: f.cardinality for f in plan.fields},
                 "vocab": {n: {"distinct_in_train": v.seen_values, "cardinality": v.spec.cardinality, "pruned_at": plan.pruned_at[n]}
                           for n, v in plan.vocabs.items()},
                 **({"reads": [report]} if report else {}), "source": source.info},
        "metrics": {"val": val, "test": test},
        "embedding": describe_embedding(model, config.train.table_optimizer),
        "timing": {"wall_seconds": wall, "count_pass_seconds": plan.count_seconds,
                   "count_pass_rows_per_second": plan.rows / max(plan.count_seconds, 1e-9),
                   "encode_seconds": encode_time, "train_seconds": train_time,
                   "train_samples_per_second": samples / max(train_time, 1e-9),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "history": [{"epoch": 1, "train_loss": sum(l * n for l, n in losses) / max(samples, 1),
                     **{f"val_{k}": v for k, v in val.items()}}],
        "environment": environment(),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.embedding.export(out_dir / "embedding.safetensors")
        write_results(results, out_dir / "results.json")
    return results


def stream_config(min_count: int, **overrides) -> StreamConfig:
    """A StreamConfig with the given threshold and any non-None overrides."""
    return replace(StreamConfig(min_count=min_count), **{k: v for k, v in overrides.items() if v is not None})
