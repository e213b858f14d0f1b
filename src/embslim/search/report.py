"""The search report: one results-shaped entry per method, and a plot of kept dimensions."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embslim.embeddings.blockwise import FieldLayout
from embslim.train.metrics import headline_metrics


def kept_dims_table(layouts: dict[str, FieldLayout], counts: dict[str, np.ndarray]) -> dict[str, list[dict]]:
    """Per field and block: id range, rows, mean training frequency, kept dimensions."""
    table = {}
    for name, lay in layouts.items():
        c = counts[name]
        table[name] = [{"rows": [a, b], "mean_frequency": float(c[a:b].mean()), "kept_dims": len(cols)}
                       for (a, b, cols) in zip(lay.starts[:-1], lay.starts[1:], lay.cols)]
    return table


def dims_per_field(table: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Each field's kept dimensions averaged over its values two ways: per stored row
    (memory share) and per training occurrence (the width the model sees on average)."""
    out = {}
    for name, blocks in table.items():
        rows = [b["rows"][1] - b["rows"][0] for b in blocks]
        mass = [r * b["mean_frequency"] for r, b in zip(rows, blocks)]
        dims = [b["kept_dims"] for b in blocks]
        out[name] = {"per_row": float(np.average(dims, weights=rows)),
                     "per_occurrence": float(np.average(dims, weights=mass)) if sum(mass) > 0 else 0.0}
    return out


def plot_kept_dims(table: dict[str, list[dict]], width: int, path: Path, title: str) -> None:
    """PNG: kept dimension against block mean frequency (log scale), one line per field.

    Blocks never seen in training (an OOV bucket alone) have no frequency to place and are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, blocks in table.items():
        points = sorted((b["mean_frequency"], b["kept_dims"]) for b in blocks if b["mean_frequency"] > 0)
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("mean training frequency of the block's values (log)")
    ax.set_ylabel(f"kept dimensions (of {width})")
    ax.set_ylim(-0.5, width + 0.5)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_lines(report: dict) -> list[str]:
    """Readable lines of a search report: metric and bytes per method, timing."""
    asked = report.get("budget_asked", report["budget_bytes"])
    kept = "" if asked == report["budget_bytes"] else f", of {asked:,} asked"
    lines = [f"budget {report['budget_bytes']:,} bytes ({report['budget_bytes'] / report['full_bytes']:.1%} of full {report['full_bytes']:,}{kept})"]
    for name, run in report["runs"].items():
        test = headline_metrics(run["metrics"]["test"])
        lines.append(f"  {name:<8} test {test}   {run['embedding']['bytes']:>11,} bytes   {run['timing']['wall_seconds']:.1f}s")
    t = report["timing"]
    lines.append(f"full training {t['full_seconds']:.1f}s; DNIS search {t['search_seconds']:.1f}s + retrain {t['retrain_seconds']:.1f}s "
                 f"= {t['search_plus_retrain_over_full']:.2f}x full")
    return lines
