"""Merge benchmark grids of one spec into one results folder: a grid extended by seeds or methods in separate runs.

    python bench/merge_grids.py --out benchmarks/results/bench-criteo-shaped-ctr-deepfm \
        benchmarks/results/bench-criteo-shaped-ctr-deepfm runs/criteo-learned-more --note "seeds 1-2 of ... (AMD EPYC)"

Each source is a finished grid folder (its results.json) or a grid still running (the cells finished in its
runs/*/row.json). A cell (method, budget, seed) is taken from the first source that has it, so a committed
grid listed first keeps its cells and later sources only add. --out gets results.csv/json, report.md (the
first source's spec, with every method and seed present; the command line and --note in the header) and the
Pareto chart, as `embslim bench` writes them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from embslim.bench.report import PRIMARY, machine_line, plot_pareto, summarise, write_markdown, write_table


def grid_rows(folder: Path) -> list[dict]:
    """The rows of a grid folder: its results.json, or each finished cell's row.json while it runs."""
    if (folder / "results.json").exists():
        return json.loads((folder / "results.json").read_text())
    return [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*/row.json"))]


def merge(sources: list[Path]) -> list[dict]:
    """Rows of every source, a cell kept from the first source that has it; the first source's order first."""
    rows, seen = [], set()
    for folder in sources:
        for row in grid_rows(folder):
            key = (row["method"], float(row["budget"]), int(row["seed"]))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", type=Path, nargs="+", help="grid folders, the one whose cells win first")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--note", default="", help="a sentence for the report's header (which cells ran where)")
    args = p.parse_args()
    spec_file = next((s / "spec.json" for s in args.sources if (s / "spec.json").exists()), None)
    if spec_file is None:
        raise SystemExit("no source has a spec.json (a finished grid folder)")
    spec = json.loads(spec_file.read_text())
    rows = merge(args.sources)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    spec.update(methods=methods, seeds=sorted({int(r["seed"]) for r in rows}))
    args.out.mkdir(parents=True, exist_ok=True)
    write_table(rows, args.out)
    metric = PRIMARY[spec["task"]]
    summary = summarise(rows, metric)
    title = f"{spec['dataset']} {spec['task']} {spec['model']}: test {metric} against embedding bytes"
    plot_pareto(summary, metric, args.out, title)
    command = "python bench/merge_grids.py " + " ".join(str(s) for s in args.sources) + f" --out {args.out}"
    header = [f"# {title}", "", f"Merged: `{command}`" + (f". {args.note}" if args.note else ""), "",
              f"{machine_line()} (where the merge ran; each cell ran where the note says)", "", f"Spec: `{json.dumps(spec)}`"]
    ran = {(r["method"], float(r["budget"])) for r in rows}
    not_run = {(m, float(b)) for m in methods if m != "full" for b in spec["budgets"]} - ran
    write_markdown(summary, metric, args.out, header, tuple(spec["budgets"]), not_run)
    (args.out / "spec.json").write_text(json.dumps(spec, indent=1))
    print(f"{len(rows)} cells from {len(args.sources)} sources -> {args.out}")


if __name__ == "__main__":
    main()
