"""Online training over a time-ordered stream with progressive validation (`embslim train --stream --online`).

No counting pass and no vocabulary: each cell's raw value becomes a 62-bit id by a seeded hash
(`embslim.data.stream.raw_ids`), so ids keep arriving that nothing has seen, as in a production log.
A method that takes any int64 id (`collisionless`; `hash` when no field is kept whole) reads those
ids as they are; any other method reads them modulo `id_space`, the rows per field it is built for
(so `full` with `id_space` rows is a static hashed table of id_space rows per field).

The stream is read once, in order. Each chunk is first scored by the model as it stands (eval mode,
no gradient, so nothing is admitted or counted) and then trained on (one pass, shuffled within the
chunk). Progressive validation: AUC and logloss over every scored row, reported with and without
the first chunk (scored by the untrained model), plus each chunk's own. Per chunk, results.json
records the embedding's serve and train bytes, the bytes the training process holds for it (the
byte cap applies to this: `stats()["held_bytes"]` when the method has it, else its serve bytes),
live rows and capacity when the method reports them, and the process's resident memory. The cap
is checked after every chunk; exceeding it is an error. Scores and labels are kept (8 bytes a row)
for the exact stream-wide AUC.
"""
from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from embslim.data.fields import FeatureTable, FieldSpec, PreparedData
from embslim.data.stream import StreamSource, raw_ids
from embslim.embeddings import method_info
from embslim.errors import BudgetError, ConfigError
from embslim.models.base import Recommender
from embslim.train.metrics import ctr_metrics
from embslim.train.run import RunConfig, build_model, describe_embedding, environment, model_data, write_results
from embslim.train.stream import StreamTrainer

DEFAULT_ID_SPACE = 1 << 20


def raw_fields(names: list[str], id_space: int) -> list[FieldSpec]:
    """Fields of `id_space` rows each with no counts known (zeros, stored once: no memory per id)."""
    return [FieldSpec(name, id_space, np.broadcast_to(np.zeros(1, dtype=np.int64), (id_space,))) for name in names]


def raw_data(name: str, fields: list[FieldSpec], ids: np.ndarray, label: np.ndarray) -> PreparedData:
    every = np.arange(len(label))
    return PreparedData(name, "ctr", FeatureTable(fields, ids, {}, label), {"train": every, "val": every, "test": every})


def raw_skeleton(name: str, names: list[str], id_space: int) -> PreparedData:
    """The stream's fields with no rows: what building a model and sizing a budget need."""
    fields = raw_fields(names, id_space)
    return raw_data(name, fields, np.zeros((0, len(fields)), dtype=np.int64), np.zeros(0, dtype=np.float32))


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), else its peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_record(model, table_optimizer: str) -> dict:
    """The embedding's bytes now: serve, train, held (what the byte cap bounds), live rows and capacity if known."""
    emb = model.embedding
    described = describe_embedding(model, table_optimizer)
    stats = emb.stats() if hasattr(emb, "stats") else {}
    out = {"serve_bytes": described["bytes"], "train_bytes": described["train_bytes"],
           "held_bytes": stats.get("held_bytes", described["bytes"]), "rss_mb": rss_mb()}
    if "live_rows" in stats:
        out.update(live_rows=stats["live_rows"], capacity=stats["capacity"])
    return out


def chunk_metrics(label: np.ndarray, logit: np.ndarray) -> dict:
    """AUC (None when the chunk has one class only) and logloss of one chunk."""
    m = ctr_metrics(label, logit)
    return {**m, "auc": None if np.isnan(m["auc"]) else m["auc"]}


def progressive(labels: list[np.ndarray], logits: list[np.ndarray]) -> dict:
    label, logit = np.concatenate(labels), np.concatenate(logits)
    return {"rows": int(len(label)), **ctr_metrics(label, logit)}


def run_online(source: StreamSource, config: RunConfig, out_dir: Path | None = None, id_space: int = DEFAULT_ID_SPACE,
               hash_seed: int = 0) -> dict:
    """Score then train each chunk of `source` in order; the results record. In `out_dir`: results.json,
    online.png and the trained embedding (embedding.safetensors)."""
    results, model = train_online(source, config, id_space, hash_seed)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.embedding.export(out_dir / "embedding.safetensors")
        write_results(results, out_dir / "results.json")
        plot_online(results, out_dir / "online.png")
    return results


def train_online(source: StreamSource, config: RunConfig, id_space: int = DEFAULT_ID_SPACE, hash_seed: int = 0) -> tuple[dict, Recommender]:
    """Score then train each chunk of `source` in order: (the results record, the trained model)."""
    if config.train.epochs != 1:
        raise ConfigError("--online reads the stream once; leave --epochs at 1")
    if method_info(config.embedding.method).source == "trained":
        raise ConfigError(f"--online trains from scratch; {config.embedding.method!r} converts a trained table")
    t0 = time.perf_counter()
    fields = raw_fields(source.field_names, id_space)
    model, _ = build_model(raw_skeleton(source.name, source.field_names, id_space), config)
    if getattr(model, "objective", "pointwise") != "pointwise" or config.train.pair_loss:
        raise ConfigError(f"--online trains pointwise CTR backbones, not {config.model!r}")
    raw = model.embedding.accepts_raw_ids
    cap = config.embedding.budget_bytes
    trainer: StreamTrainer | None = None
    chunks, labels, logits = [], [], []
    rows, max_held, hash_time, score_time, train_time = 0, 0, 0.0, 0.0, 0.0
    for index, chunk in enumerate(source.chunks()):
        if len(chunk) == 0:
            continue
        h0 = time.perf_counter()
        ids = raw_ids(chunk, source.field_names, hash_seed)
        if not raw:
            ids %= id_space
        hash_time += time.perf_counter() - h0
        chunk_data = model_data(raw_data(source.name, fields, ids, chunk.label), config.model)
        if trainer is None:
            trainer = StreamTrainer(model, chunk_data, config.train, None)
            known = source.info.get("rows")
            trainer.total_steps = -(-known // config.train.batch_size) if known else 1 << 40
        trainer.use(chunk_data)
        s0 = time.perf_counter()
        logit = trainer.predict(chunk_data.table)
        score_time += time.perf_counter() - s0
        s0 = time.perf_counter()
        loss, _ = trainer.train_epoch(index)
        train_time += time.perf_counter() - s0
        labels.append(chunk.label.astype(np.float32))
        logits.append(logit.astype(np.float32))
        memory = memory_record(model, config.train.table_optimizer)
        if cap is not None and memory["held_bytes"] > cap:
            raise BudgetError(f"embedding {config.embedding.method!r} holds {memory['held_bytes']:,} bytes after chunk {index}, "
                              f"over its cap of {cap:,}")
        max_held = max(max_held, memory["held_bytes"])
        chunks.append({"chunk": index, "first_row": rows, "rows": len(chunk), **chunk_metrics(chunk.label, logit),
                       "positive_rate": float(chunk.label.mean()), "train_loss": loss, **memory})
        rows += len(chunk)
        if config.train.progress:
            c = chunks[-1]
            print(f"chunk {index}: {len(chunk):,} rows, AUC {c['auc'] or float('nan'):.4f}, logloss {c['logloss']:.4f}, "
                  f"held {c['held_bytes']:,} B, RSS {c['rss_mb']:.0f} MB", flush=True)
    if trainer is None:
        raise ConfigError("the stream has no rows")
    wall = time.perf_counter() - t0
    metrics = {"progressive": progressive(labels, logits)}
    if len(labels) > 1:
        metrics["progressive_after_first_chunk"] = progressive(labels[1:], logits[1:])
    report = source.report.as_dict() if source.report is not None else None
    results = {
        "config": {"dataset": source.name, "task": "ctr", "online": True, "id_space": id_space, "hash_seed": hash_seed,
                   **json.loads(json.dumps(asdict(config), default=str))},
        "data": {"rows": rows, "chunks": len(chunks), "fields": source.field_names,
                 "ids": ("raw: each value's 62-bit seeded hash, read as is by the embedding" if raw else
                         f"raw: each value's 62-bit seeded hash modulo the id space ({id_space:,} rows per field)"),
                 "order": "the source's order (a file's line order; the generated stream's time)",
                 **({"reads": [report]} if report else {}), "source": source.info},
        "metrics": metrics,
        "chunks": chunks,
        "memory": {"cap_bytes": cap, "max_held_bytes": max_held, "max_serve_bytes": max(c["serve_bytes"] for c in chunks),
                   "max_train_bytes": max(c["train_bytes"] for c in chunks), "max_rss_mb": max(c["rss_mb"] for c in chunks),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "held": "what the training process holds for the table, optimiser moments aside: the byte cap bounds it"},
        "embedding": describe_embedding(model, config.train.table_optimizer),
        "timing": {"wall_seconds": wall, "hash_seconds": hash_time, "score_seconds": score_time, "train_seconds": train_time,
                   "train_samples_per_second": rows / max(train_time, 1e-9)},
        "environment": environment(),
    }
    return results, model


def plot_online(results: dict, path: Path) -> None:
    """Each chunk's AUC and the stream's progressive AUC above, memory below, against rows seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunks = results["chunks"]
    x = [(c["first_row"] + c["rows"]) / 1e6 for c in chunks]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(x, [np.nan if c["auc"] is None else c["auc"] for c in chunks], marker="o", ms=3, label="chunk AUC (scored before training on it)")
    p = results["metrics"].get("progressive_after_first_chunk", results["metrics"]["progressive"])
    top.axhline(p["auc"], color="grey", ls="--", lw=1, label=f"progressive AUC {p['auc']:.4f}")
    top.set_ylabel("AUC")
    top.legend(fontsize=8)
    mib = 2**20
    bottom.plot(x, [c["serve_bytes"] / mib for c in chunks], label="serve bytes")
    bottom.plot(x, [c["held_bytes"] / mib for c in chunks], label="held (capped)")
    bottom.plot(x, [c["train_bytes"] / mib for c in chunks], label="train bytes (with optimiser)")
    if results["memory"]["cap_bytes"]:
        bottom.axhline(results["memory"]["cap_bytes"] / mib, color="red", ls=":", lw=1, label="byte cap")
    bottom.set_ylabel("MiB")
    bottom.set_xlabel("rows seen (millions)")
    rss = bottom.twinx()
    rss.plot(x, [c["rss_mb"] for c in chunks], color="black", lw=0.8, alpha=0.5, label="process RSS (MB, right)")
    rss.set_ylabel("RSS MB")
    lines = bottom.get_legend_handles_labels()
    extra = rss.get_legend_handles_labels()
    bottom.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="center right")
    emb = results["embedding"]
    fig.suptitle(f"{results['config']['dataset']} online, {emb['method']}: {results['data']['rows']:,} rows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
