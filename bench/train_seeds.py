"""`embslim train` over several seeds: test metrics as mean ± std, for the README's headline figures.

    python bench/train_seeds.py --seeds 0,1,2 --out benchmarks/results/train-seeds \\
        -- --dataset movielens-100k --task ctr --model deepfm --dim 16

Everything after `--` is passed to `embslim train` (plus --seed, --out, --quiet). Each seed runs
in OUT/seedN (a seed whose results.json is there is read back, not run again); summary.json and
summary.md in --results (default OUT) hold mean, sample std and the per-seed values of every test
metric, the embedding bytes and the machine. Different CPUs and thread counts sum
floats in different orders, so single-seed figures move between machines; the spread over seeds
says how much that matters.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from embslim.bench.report import machine_line
from embslim.cli import main as cli


def summarise(results: list[dict]) -> dict:
    """metric -> {mean, std, values} over the runs' test metrics."""
    out = {}
    for metric in results[0]["metrics"]["test"]:
        values = [r["metrics"]["test"][metric] for r in results]
        out[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "values": values}
    return out


def run() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, required=True, help="the runs, one folder per seed (checkpoints: not for the repository)")
    p.add_argument("--results", type=Path, help="where summary.json and summary.md go (default --out)")
    args = p.parse_args(argv[:split])
    train_args = argv[split + 1:]
    results = []
    for seed in args.seeds.split(","):
        out = args.out / f"seed{seed}"
        if not (out / "results.json").exists() and cli(["train", *train_args, "--seed", seed, "--out", str(out), "--quiet"]) != 0:
            raise SystemExit(f"seed {seed} failed")
        results.append(json.loads((out / "results.json").read_text()))
    summary = {"command": "embslim train " + " ".join(train_args), "seeds": args.seeds, "machine": machine_line(),
               "bytes": results[0]["embedding"]["bytes"], "test": summarise(results),
               "wall_seconds": [r["timing"]["wall_seconds"] for r in results]}
    results_dir = args.results or args.out
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics = ", ".join(f"{m} {s['mean']:.4f} ± {s['std']:.4f}" for m, s in summary["test"].items())
    text = f"`{summary['command']}`, seeds {args.seeds}: {metrics}; {summary['bytes']:,} embedding bytes.\n{summary['machine']}\n"
    (results_dir / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    run()
