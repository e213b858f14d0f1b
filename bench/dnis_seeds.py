"""DNIS against full, uniform and MDE over several seeds: mean and spread per method, written as JSON and Markdown.

    python bench/dnis_seeds.py --dataset movielens-100k --task ctr --model deepfm --budget 0.2 --seeds 0,1,2 \\
        --out runs/dnis-movielens-100k-ctr-deepfm --results benchmarks/results/dnis-movielens-100k-ctr-deepfm

Each seed is one `embslim search` run in OUT/seedN (resumable: finished seeds and stages are reused); arguments
after `--` go to every `embslim search` (e.g. `-- --precision int8 --baselines=`). The summary (JSON and
Markdown) goes to --results (default OUT). Needs the dataset under $EMBSLIM_DATA_DIR or --data-path.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from embslim.bench.report import machine_line
from embslim.cli import main as cli


def aggregate(reports: list[dict], metric: str) -> dict:
    methods = list(reports[0]["runs"])
    out = {}
    for m in methods:
        values = [r["runs"][m]["metrics"]["test"][metric] for r in reports]
        out[m] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                  "values": values, "bytes": reports[0]["runs"][m]["embedding"]["bytes"]}
    ratios = [r["timing"]["search_plus_retrain_over_full"] for r in reports]
    out["timing"] = {"search_plus_retrain_over_full_mean": float(np.mean(ratios)), "values": ratios}
    return out


def markdown(summary: dict, args: argparse.Namespace, metric: str, budget_bytes: int, full_bytes: int) -> str:
    lines = [f"# DNIS on {args.dataset} {args.task} {args.model}, budget {args.budget} ({budget_bytes:,} of {full_bytes:,} bytes)", "",
             f"Command: `python bench/dnis_seeds.py --dataset {args.dataset} --task {args.task} --model {args.model} --budget {args.budget} --seeds {args.seeds}"
             f" --out OUT{' -- ' + ' '.join(args.search_args) if args.search_args else ''}`",
             machine_line(), "",
             f"| method | test {metric} mean | std | per seed | embedding bytes |", "|---|---|---|---|---|"]
    for m, s in summary.items():
        if m == "timing":
            continue
        lines.append(f"| {m} | {s['mean']:.4f} | {s['std']:.4f} | {', '.join(f'{v:.4f}' for v in s['values'])} | {s['bytes']:,} |")
    t = summary["timing"]
    lines += ["", f"DNIS search + retrain wall time over full training: {t['search_plus_retrain_over_full_mean']:.2f}x "
                  f"(per seed {', '.join(f'{v:.2f}' for v in t['values'])})."]
    return "\n".join(lines) + "\n"


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="movielens-100k")
    p.add_argument("--task", default="ctr")
    p.add_argument("--model", default="deepfm")
    p.add_argument("--budget", default="0.2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--data-path")
    p.add_argument("--out", type=Path, required=True, help="the search runs, one folder per seed (checkpoints: not for the repository)")
    p.add_argument("--results", type=Path, help="where summary.json and summary.md go (default --out)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    extra = args.search_args = argv[split + 1:]
    reports = []
    for seed in args.seeds.split(","):
        out = args.out / f"seed{seed}"
        argv = ["search", "--dataset", args.dataset, "--task", args.task, "--model", args.model, "--budget", args.budget,
                "--seed", seed, "--out", str(out), "--quiet", "--resume"] + (["--data-path", args.data_path] if args.data_path else []) + extra
        if cli(argv) != 0:
            raise SystemExit(f"seed {seed} failed")
        reports.append(json.loads((out / "report.json").read_text()))
    metric = {"ctr": "auc", "rating": "rmse", "topk": "ndcg@10"}[args.task]
    summary = aggregate(reports, metric)
    results = args.results or args.out
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary, args, metric, reports[0]["budget_bytes"], reports[0]["full_bytes"])
    (results / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    run()
