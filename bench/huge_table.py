"""A table of 10^8 rows under a 2 GB embedding budget: `embslim train --stream` on `synthetic-criteo-1e8`.

`synthetic-criteo-1e8` is synthetic-criteo with its third field at 10^8 generated ids (6.4 GB as a full
fp32 table at dim 16, 6.7 GB for all 26 fields). First each of `--methods` is built at `--budget` on the
stream's fields and timed over a few training steps of `--batch-size` rows (here, in this process); the
fastest then trains one epoch of DeepFM (dim 16) over `--rows` streamed rows, in its own process, with
row-wise Adagrad on the tables (one float of optimiser state per row instead of Adam's two per value);
peak RSS is that process's (os.wait4). The stream's ids of the huge field are then drawn once more
here to count how many distinct ids the rows touched and how far they reach.

On a machine shared with other jobs, run it with OMP_NUM_THREADS=1 (several threads per process were 7x slower here).

    OMP_NUM_THREADS=1 python bench/huge_table.py [--rows 3000000] [--methods hash,qr] [--budget 2GB] [--batch-size 4096] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASET = "synthetic-criteo-1e8"


def train_run(method: str, rows: int, budget: str, batch_size: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "embslim.cli", "train", "--dataset", DATASET, "--synthetic-rows", str(rows), "--stream",
           "--model", "deepfm", "--dim", "16", "--embedding", method, "--budget", budget, "--table-optimizer", "rowwise-adagrad",
           "--batch-size", str(batch_size), "--seed", "0", "--out", str(out), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{method} failed:\n{output[-3000:]}")
    r = json.loads((out / "results.json").read_text())
    t = r["timing"]
    return {"method": method, "rows": rows, "budget": budget, "command": " ".join(["embslim"] + cmd[3:]),
            "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - start,
            "embedding_bytes": r["embedding"]["bytes"], "embedding_train_bytes": r["embedding"]["train_bytes"],
            "full_fp32_bytes_of_huge_field": r["data"]["fields"]["field2"] * 16 * 4,
            "train_samples_per_second": t["train_samples_per_second"], "count_pass_rows_per_second": t["count_pass_rows_per_second"],
            "train_seconds": t["train_seconds"], "count_pass_seconds": t["count_pass_seconds"], "encode_seconds": t["encode_seconds"],
            "test_auc": r["metrics"]["test"]["auc"], "test_logloss": r["metrics"]["test"]["logloss"],
            "huge_field_cardinality": r["data"]["fields"]["field2"], "settings": r["embedding"]["settings"],
            "torch_threads": r["environment"]["threads"]}


def step_timing(methods: list[str], budget: str, batch_size: int, steps: int = 6) -> list[dict]:
    """Milliseconds per training step (forward, backward, optimiser) of each method at the budget, on one chunk
    of the stream (the first step, which allocates optimiser state, not counted)."""
    import numpy as np

    from embslim.budget import parse_budget
    from embslim.data.stream import StreamConfig, count_pass, encode_chunk, synthetic_chunks
    from embslim.data.synthetic import synthetic_config
    from embslim.embeddings import EmbeddingConfig
    from embslim.embeddings.full import full_bytes
    from embslim.train.run import RunConfig, build_model, model_data
    from embslim.train.stream import chunk_data, skeleton
    from embslim.train.trainer import TrainConfig, Trainer

    source = synthetic_chunks(synthetic_config(DATASET, batch_size * steps * 2), batch_size * steps)
    plan = count_pass(source, StreamConfig(eval_rows=batch_size))
    chunk = next(source.chunks())
    data = chunk_data(DATASET, plan, encode_chunk(plan, chunk), chunk.label)
    out = []
    for method in methods:
        config = RunConfig("deepfm", EmbeddingConfig(method, 16, budget_bytes=parse_budget(budget, full_bytes(plan.fields, [16] * len(plan.fields)))),
                           train=TrainConfig(epochs=1, batch_size=batch_size, table_optimizer="rowwise-adagrad", progress=False))
        model, _ = build_model(skeleton(DATASET, plan), config)
        trainer = Trainer(model, model_data(data, "deepfm"), config.train)
        times = []
        for batch in trainer.objective.batches(0):
            start = time.perf_counter()
            trainer.train_step(batch)
            times.append(time.perf_counter() - start)
        out.append({"method": method, "ms_per_step": 1000 * float(np.median(times[1:])), "steps": len(times) - 1,
                    "embedding_bytes": model.embedding_bytes("serve")})
        print(json.dumps(out[-1]), flush=True)
        del model, trainer
    return out


def huge_field_reach(rows: int) -> dict:
    """Distinct ids of the huge field among the stream's rows, and the largest, by drawing the stream again."""
    import numpy as np

    from embslim.data.stream import StreamConfig, synthetic_chunks
    from embslim.data.synthetic import synthetic_config

    seen = np.zeros(synthetic_config(DATASET).cardinalities[2], dtype=bool)  # 100 MB: a bitmap of the 10^8 ids
    for chunk in synthetic_chunks(synthetic_config(DATASET, rows), StreamConfig().chunk_rows).chunks():
        seen[chunk.fields["field2"][1]] = True
    hit = np.flatnonzero(seen)
    return {"distinct_ids": int(len(hit)), "max_id": int(hit[-1]), "ids_above_1e7": int((hit >= 10**7).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=3_000_000)
    p.add_argument("--methods", default="hash,qr")
    p.add_argument("--budget", default="2GB")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--no-reach", action="store_true", help="skip counting the distinct ids the stream touched")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    report: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "dataset": DATASET, "runs": []}
    report["step_timing"] = step_timing(args.methods.split(","), args.budget, args.batch_size)
    fastest = min(report["step_timing"], key=lambda r: r["ms_per_step"])["method"]
    with tempfile.TemporaryDirectory() as tmp:
        run = train_run(fastest, args.rows, args.budget, args.batch_size, Path(tmp) / fastest)
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    if not args.no_reach:
        report["huge_field_reach"] = huge_field_reach(args.rows)
        print(json.dumps(report["huge_field_reach"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
