"""Streaming training in bounded memory: peak RSS of `embslim train --stream` at two stream lengths, one run.

Each length trains one epoch of DeepFM (dim 16, `hash` tables of a fixed `--budget`, so the model cannot grow
with the vocabulary) over the generated `synthetic-criteo` stream
(26 fields, cardinalities up to 1M) in its own process; peak RSS is that process's (os.wait4), so the
two figures compare directly: the bound must not grow with the rows. The same run measures the text
loader: the counting pass of `--stream` over the 10,000 real Criteo rows repeated `--repeat` times
(pyarrow blocks, row accounting, value counting) against iterating the same file's blocks with pyarrow
alone, rows/s of each.

    python bench/stream_memory.py [--rows 5000000,20000000] [--repeat 50] [--batch-size 4096] [--budget 64MiB] [--out FILE.json]
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


def train_run(rows: int, batch_size: int, budget: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "embslim.cli", "train", "--dataset", "synthetic-criteo", "--synthetic-rows", str(rows), "--stream",
           "--model", "deepfm", "--dim", "16", "--embedding", "hash", "--budget", budget, "--batch-size", str(batch_size), "--seed", "0",
           "--out", str(out), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"run of {rows} rows failed:\n{output}")
    results = json.loads((out / "results.json").read_text())
    return {"rows": rows, "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - start,
            "test_auc": results["metrics"]["test"]["auc"], "timing": results["timing"], "data_rows": results["data"]["rows"]}


def loader_run(path: Path) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from embslim.data.criteo import COLUMNS
    from embslim.data.stream import StreamConfig, count_pass, text_chunks

    t0 = time.perf_counter()
    reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(column_names=COLUMNS, use_threads=False, block_size=32 << 20),
                           parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                           convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS}))
    rows = sum(batch.num_rows for batch in reader)
    raw_s = time.perf_counter() - t0
    plan = count_pass(text_chunks("criteo", path), StreamConfig(min_count=10))
    return {"rows": rows, "pyarrow_rows_per_s": rows / raw_s, "count_pass_rows_per_s": plan.rows / plan.count_seconds,
            "ratio_to_pyarrow": (plan.rows / plan.count_seconds) / (rows / raw_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="5000000,20000000")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--budget", default="64MiB", help="bytes of the hashed tables: fixed, so only the data could grow memory")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    head = (Path(os.environ.get("EMBSLIM_DATA_DIR", "data")) / "criteo-dac-head10k/train_head10k.txt").read_bytes()
    report: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        path.write_bytes(head * args.repeat)
        report["loader"] = loader_run(path)
        print(json.dumps(report["loader"]), flush=True)
        path.unlink()
        report["train"] = []
        for rows in (int(r) for r in args.rows.split(",")):
            run = train_run(rows, args.batch_size, args.budget, Path(tmp) / f"run-{rows}")
            report["train"].append(run)
            print(json.dumps(run), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
