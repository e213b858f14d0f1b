"""Benchmark outputs: the results table (CSV, JSON), the Pareto chart (PNG, SVG) and a Markdown report."""
from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HIGHER_IS_BETTER = {"auc": True, "logloss": False, "rmse": False, "mae": False, "mrr": True, "s100_mrr": True,
                    **{f"{p}{m}@{k}": True for p in ("", "s100_") for m in ("hr", "ndcg", "recall") for k in (10, 20, 50)}}
PRIMARY = {"ctr": "auc", "rating": "rmse", "topk": "ndcg@10"}


def machine_line() -> str:
    """Where and when figures were measured, for the top of every report."""
    import torch

    return (f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"Python {platform.python_version()}; date {time.strftime('%Y-%m-%d')}.")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def emit_json(record: dict, out: Path | None) -> None:
    """Print a benchmark script's record as JSON, and write it to `out` when given."""
    text = json.dumps(record, indent=1)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def write_table(rows: list[dict], out: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=1))


def summarise(rows: list[dict], metric: str) -> dict[str, dict[float, dict]]:
    """method -> budget -> mean/std of the test metric and mean bytes over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("status", "ok") == "ok":
            groups[(r["method"], r["budget"])].append(r)
    out: dict[str, dict[float, dict]] = defaultdict(dict)
    order = list(dict.fromkeys(r["method"] for r in rows))
    for (method, budget), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), -kv[0][1])):
        values = np.array([r[f"test_{metric}"] for r in rs], dtype=float)
        out[method][budget] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                               "bytes": float(np.mean([r["bytes"] for r in rs])), "seeds": len(rs)}
    return dict(out)


def plot_pareto(summary: dict, metric: str, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20").colors
    markers = "os^vDP<>Xph"
    for i, (method, by_budget) in enumerate(summary.items()):
        points = sorted(by_budget.values(), key=lambda p: p["bytes"])
        full = method == "full"
        ax.errorbar([p["bytes"] for p in points], [p["mean"] for p in points], yerr=[p["std"] for p in points],
                    marker="*" if full else markers[i % len(markers)], markersize=12 if full else 5, capsize=2,
                    color="black" if full else colours[i % len(colours)], linewidth=1, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes to serve (log)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"pareto.{ext}", dpi=120)
    plt.close(fig)


def winners(summary: dict, metric: str) -> dict[float, str]:
    """Best method by mean test metric at each budget (the full reference excluded)."""
    best: dict[float, tuple[float, str]] = {}
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    for method, by_budget in summary.items():
        if method == "full":
            continue
        for budget, p in by_budget.items():
            if budget not in best or sign * p["mean"] > sign * best[budget][0]:
                best[budget] = (p["mean"], method)
    return {b: m for b, (_, m) in sorted(best.items(), reverse=True)}


def cell_text(point: dict, most: int) -> str:
    """"mean ± std (bytes)", naming the seeds where a cell has fewer than the grid's most (one seed has no spread)."""
    if point["seeds"] == 1 and most > 1:
        return f"{point['mean']:.4f} (1 seed; {point['bytes']:,.0f} B)"
    seeds = f"{point['seeds']} seeds; " if point["seeds"] < most else ""
    return f"{point['mean']:.4f} ± {point['std']:.4f} ({seeds}{point['bytes']:,.0f} B)"


def write_markdown(summary: dict, metric: str, out: Path, header: list[str], asked: tuple[float, ...] = (),
                   not_run: set[tuple[str, float]] = frozenset()) -> None:
    """Table of mean ± std per method and budget (every budget asked, n/a where infeasible, "not run" for the
    (method, budget) cells in `not_run`, e.g. of a grid merged while still running) and the winners."""
    budgets = sorted({b for by in summary.values() for b in by if b != 1.0 or len(by) > 1} | set(asked), reverse=True)
    lines = [*header, "", "![Pareto chart](pareto.png)", "", f"Test {metric}, mean ± std over seeds (embedding bytes).", "",
             "| method | " + " | ".join(f"budget {b:g}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    most = max((p["seeds"] for by in summary.values() for p in by.values()), default=1)
    for method, by in summary.items():
        cells = [cell_text(by[b], most) if b in by else "not run" if (method, b) in not_run else "n/a" for b in budgets]
        if method == "full":
            cells = [cell_text(next(iter(by.values())), most) + " reference"] + [""] * (len(budgets) - 1)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "n/a: the method cannot be built at that budget (e.g. uniform below one dimension per field).",
              "", "Best method at each budget:", ""]
    best = winners(summary, metric)
    lines += [f"- budget {b:g}: **{best[b]}** ({summary[best[b]][b]['mean']:.4f})" if b in best else f"- budget {b:g}: no method fits"
              for b in budgets]
    (out / "report.md").write_text("\n".join(lines) + "\n")
