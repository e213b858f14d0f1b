"""One process against N: test AUC and wall time of `embslim train --nproc N` over seeds.

Runs DeepFM on MovieLens-100K CTR (dim 16, full tables, the recipe's settings) once per seed with
`--nproc 1` and with `--nproc N`, one CLI process at a time, each process with one thread
(OMP_NUM_THREADS=1), and writes per-run test AUC, command wall time and the run's own train seconds,
plus mean and standard deviation per process count.

    python bench/nproc_auc.py [--nproc 2] [--seeds 3] [--dataset movielens-100k] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(dataset: str, nproc: int, seed: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "embslim.cli", "train", "--dataset", dataset, "--task", "ctr", "--model", "deepfm", "--dim", "16",
           "--seed", str(seed), "--nproc", str(nproc), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return {"nproc": nproc, "seed": seed, "test_auc": results["metrics"]["test"]["auc"], "command_wall_s": time.perf_counter() - start,
            "train_seconds": results["timing"]["train_seconds"], "epochs": len(results["history"]),
            "recorded_nproc": results["config"]["nproc"]}


def summary(runs: list[dict]) -> dict:
    out = {}
    for key in ("test_auc", "command_wall_s", "train_seconds"):
        values = [r[key] for r in runs]
        out[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--dataset", default="movielens-100k")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for nproc in (1, args.nproc):
                run = train(args.dataset, nproc, seed, Path(tmp) / f"n{nproc}-s{seed}")
                runs.append(run)
                print(json.dumps(run), flush=True)
    by = {n: summary([r for r in runs if r["nproc"] == n]) for n in (1, args.nproc)}
    report = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "threads_per_process": 1, "dataset": args.dataset,
              "model": "deepfm", "dim": 16, "embedding": "full", "runs": runs, "summary": {str(n): s for n, s in by.items()},
              "wall_ratio_nproc_to_1": by[args.nproc]["command_wall_s"]["mean"] / by[1]["command_wall_s"]["mean"],
              "train_seconds_ratio_nproc_to_1": by[args.nproc]["train_seconds"]["mean"] / by[1]["train_seconds"]["mean"]}
    print(json.dumps(report["summary"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
