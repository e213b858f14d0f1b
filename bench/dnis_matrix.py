"""DNIS against the uniform and MDE baselines on every backbone and task: the DNIS matrix.

    python bench/dnis_matrix.py --out runs/dnis-matrix --results benchmarks/results/dnis-matrix   # all 8 pairs
    python bench/dnis_matrix.py --pairs rating:fm,ctr:deepfm --seeds 3 --out runs/matrix

Each (task, model) pair is one `embslim bench` grid (full, uniform, mde, dnis x budgets x seeds)
in OUT/TASK-MODEL, resumable cell by cell. RESULTS/matrix.md and RESULTS/matrix.json (RESULTS defaults to
OUT; per pair also RESULTS/TASK-MODEL.csv, one row per run) hold, per cell, the
mean and standard deviation of the test metric over seeds, and whether DNIS is at least as good
as the better baseline within one standard deviation of that baseline.
Needs MovieLens-100K under $EMBSLIM_DATA_DIR (or --data-path).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from embslim.bench.grid import BenchSpec
from embslim.bench.report import HIGHER_IS_BETTER, PRIMARY, machine_line, summarise, write_table
from embslim.bench.runner import run_grid
from embslim.cli_types import dnis_options

PAIRS = ("ctr:lr", "ctr:fm", "ctr:deepfm", "ctr:dcnv2", "ctr:autoint", "rating:mf", "rating:fm", "rating:neumf")
BASELINES = ("uniform", "mde")


def verdict(summary: dict, budget: float, metric: str) -> dict:
    """DNIS against the better baseline at one budget: the gap (positive = DNIS better) and whether
    DNIS is at least as good within one standard deviation of that baseline."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    present = [m for m in BASELINES if budget in summary.get(m, {})]
    if "dnis" not in summary or budget not in summary["dnis"] or not present:
        return {"best_baseline": None, "gap": None, "holds": None}
    best = max(present, key=lambda m: sign * summary[m][budget]["mean"])
    gap = sign * (summary["dnis"][budget]["mean"] - summary[best][budget]["mean"])
    return {"best_baseline": best, "gap": gap, "holds": bool(gap >= -summary[best][budget]["std"])}


def cell_text(stats: dict | None) -> str:
    return "n/a" if stats is None else f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default=",".join(PAIRS), help="task:model pairs (default: all 8)")
    p.add_argument("--budgets", default="0.5,0.2,0.1")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--dataset", default="movielens-100k")
    p.add_argument("--data-path")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dnis", type=dnis_options, default={}, help="DNIS settings of the dnis cells, e.g. fill_rank=scaled (see DNISConfig)")
    p.add_argument("--patience", type=int, help="every cell's early-stopping patience, over the recipe's (2 reproduces matrices before 2026-11-27's CTR recipe)")
    p.add_argument("--out", type=Path, required=True, help="working folder of the runs (checkpoints, models)")
    p.add_argument("--results", type=Path, help="folder of the summary files to keep (default --out)")
    args = p.parse_args()
    results = args.results or args.out
    results.mkdir(parents=True, exist_ok=True)
    budgets = tuple(float(b) for b in args.budgets.split(","))
    matrix, lines = [], []
    for pair in args.pairs.split(","):
        task, model = pair.split(":")
        spec = BenchSpec(dataset=args.dataset, task=task, model=model, dim=16, methods=("full", "uniform", "mde", "dnis"),
                         budgets=budgets, seeds=tuple(range(args.seeds)), data_path=args.data_path, dnis=args.dnis,
                         patience=args.patience)
        out = args.out / f"{task}-{model}"
        rows = run_grid(spec, out, workers=args.workers)
        write_table(rows, out)
        (results / f"{task}-{model}.csv").write_text((out / "results.csv").read_text())
        metric = PRIMARY[task]
        summary = summarise(rows, metric)
        full = summary["full"][1.0]
        for b in budgets:
            v = verdict(summary, b, metric)
            matrix.append({"task": task, "model": model, "budget": b, "metric": metric, "full": full,
                           **{m: summary.get(m, {}).get(b) for m in ("uniform", "mde", "dnis")}, **v})
            r = matrix[-1]
            mark = {True: "yes", False: "**no**", None: "n/a"}[r["holds"]]
            gap = "n/a" if r["gap"] is None else f"{r['gap']:+.4f}"
            lines.append(f"| {task} | {model} | {b:g} | {cell_text(full)} | {cell_text(r['uniform'])} | {cell_text(r['mde'])} | "
                         f"{cell_text(r['dnis'])} | {gap} | {mark} |")
    gaps = [r["gap"] for r in matrix if r["gap"] is not None]
    held = [r["holds"] for r in matrix if r["holds"] is not None]
    header = ["# DNIS matrix: test metric (mean ± std over seeds) at a fraction of the full embedding bytes", "",
              f"Command: `python bench/dnis_matrix.py --pairs {args.pairs} --budgets {args.budgets} --seeds {args.seeds}"
              f"{' --dnis ' + ','.join(f'{k}={v}' for k, v in args.dnis.items()) if args.dnis else ''}"
              f"{f' --patience {args.patience}' if args.patience else ''} --out {args.out} --results {results}`",
              "", machine_line(), "",
              "Gap: DNIS minus the better of uniform and MDE, signed so that positive means DNIS is better "
              "(AUC higher, RMSE lower). Holds: DNIS is at least as good as that baseline within one of its standard deviations.", "",
              "| task | model | budget | full | uniform | MDE | DNIS | gap | holds |", "|---|---|---|---|---|---|---|---|---|"]
    footer = ["", f"DNIS holds in {sum(held)} of {len(held)} cells; mean gap {np.mean(gaps):+.4f} "
                  f"(positive: DNIS better on average)." if gaps else ""]
    (results / "matrix.json").write_text(json.dumps(matrix, indent=1))
    (results / "matrix.md").write_text("\n".join(header + lines + footer) + "\n")
    print("\n".join(header + lines + footer))


if __name__ == "__main__":
    run()
