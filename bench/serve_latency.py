"""Latency and throughput of exported models (`embslim export`), every method against `full` in the same run.

Criteo-shaped DeepFM (26 fields x 100,000 ids, Zipf counts and ids, dim 16, MLP 256-128): each method is
built at 0.1 of the full table's bytes (converters convert a freshly initialised full table; methods built
without a budget at dim 16; `dnis-pruned` is the blockwise layout a DNIS search serves, as in
lookup_throughput.py), written as a run folder, exported, and loaded back through the artifact's own
`serve.py`. Weights are untrained: serving cost depends on the layout, not on the values (masked methods
keep the share of rows their budget allows).

Each artifact is timed at batch sizes 1, 64 and 4096 on one thread, one call at a time, alternating call by
call with the exported `full` model at full bytes, so both see the same moments of a shared machine: p50 and
p99 latency of single calls and throughput (rows / mean latency), and the ratios to `full`.

    python bench/serve_latency.py [--calls 200] [--methods full,mde,...] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embslim.bench.report import machine_line
from embslim.embeddings import list_embeddings
from embslim.embeddings.blockwise import BlockwiseSettings
from embslim.embeddings.full import full_bytes
from embslim.errors import ConfigError
from embslim.models import ModelOptions, create_model
from embslim.serve.export import export_run

sys.path.insert(0, str(Path(__file__).parent))
from lookup_throughput import BUDGET, DIM, build, criteo_shaped_batches  # noqa: E402

SIZES = (1, 64, 4096)


def run_folder(method: str, fields, budget_bytes: int, root: Path) -> Path:
    """A DeepFM over `method` written as `embslim train` would leave it (results.json, checkpoint.pt, embedding.safetensors)."""
    torch.manual_seed(0)
    embedding = build(method, fields, budget_bytes)
    if method == "dnis-pruned":  # built directly by lookup_throughput.py: give it the settings its artifact loads from
        embedding.settings = BlockwiseSettings(embedding.layout_json())
    model = create_model("deepfm", embedding, ModelOptions(), "ctr")
    folder = root / method
    folder.mkdir(parents=True)
    embedding.export(folder / "embedding.safetensors")
    torch.save({"model": model.state_dict(), "best_state": None}, folder / "checkpoint.pt")
    (folder / "results.json").write_text(json.dumps({"config": {"model": "deepfm", "task": "ctr", "model_options": {}}, "data": {}}))
    return folder


def load_served(folder: Path):
    spec = importlib.util.spec_from_file_location(f"serve_{folder.name.replace('-', '_')}", folder / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ServedModel(folder)


def calls_for(size: int, calls: int) -> int:
    return max(10, calls if size == 1 else calls // 4 if size == 64 else calls // 20)


def paired_latencies(a, b, ids: torch.Tensor, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of `calls` single calls of a and of b on the same ids, alternating, after two warm-up calls each."""
    for _ in range(2):
        a(ids), b(ids)
    ta, tb = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        a(ids)
        t1 = time.perf_counter()
        b(ids)
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return np.array(ta), np.array(tb)


def stats(seconds: np.ndarray, size: int) -> dict:
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3),
            "rows_per_s": float(size / seconds.mean()), "calls": len(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls at batch 1 (a quarter at 64, a twentieth at 4096; at least 10)")
    parser.add_argument("--methods", help="comma-separated (default: every registered method but blockwise, plus dnis-pruned)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = args.methods.split(",") if args.methods else [m for m in list_embeddings() if m != "blockwise"] + ["dnis-pruned"]
    fields, batches = criteo_shaped_batches(0, "zipf")
    ids = batches[0].ids
    full_total = full_bytes(fields, [DIM] * len(fields))
    budget = int(BUDGET * full_total)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_run(run_folder("full", fields, None, root / "baseline"), root / "models" / "full-baseline")
        baseline = load_served(root / "models" / "full-baseline")
        for method in methods:
            print(f"{method} ...", file=sys.stderr, flush=True)
            try:
                manifest = export_run(run_folder(method, fields, budget, root / "runs"), root / "models" / method)
            except ConfigError as err:
                rows.append({"method": method, "skipped": str(err)})
                continue
            served = load_served(root / "models" / method)
            row = {"method": method, "bytes": manifest["bytes"]["embedding_tensors"], "bytes_over_full": manifest["bytes"]["embedding_tensors"] / full_total,
                   "program_file": manifest["bytes"]["program_file"], "sizes": {}}
            with torch.no_grad():
                for size in SIZES:
                    t_method, t_full = paired_latencies(served, baseline, ids[:size], calls_for(size, args.calls))
                    m, f = stats(t_method, size), stats(t_full, size)
                    row["sizes"][str(size)] = {"method": m, "full": f, "p50_ratio": m["p50_ms"] / f["p50_ms"],
                                               "throughput_ratio": m["rows_per_s"] / f["rows_per_s"]}
            rows.append(row)
            shutil_rmtree(root / "runs" / method, root / "models" / method)
    record = {"machine": machine_line(), "command": "python bench/serve_latency.py " + " ".join(sys.argv[1:]),
              "setup": {"fields": len(fields), "ids_per_field": fields[0].cardinality, "dim": DIM, "model": "deepfm 256-128",
                        "budget_fraction": BUDGET, "full_bytes": full_total, "threads": 1, "ids": "zipf"},
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_latency.json").write_text(json.dumps(record, indent=1))
    (args.out / "serve_latency.md").write_text(markdown(record))
    print(markdown(record))
    return 0


def shutil_rmtree(*paths: Path) -> None:
    import shutil

    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def markdown(record: dict) -> str:
    s = record["setup"]
    lines = [f"# Serving latency of exported models ({time.strftime('%Y-%m-%d')})", "", record["machine"], "",
             f"Command: `{record['command']}`", "",
             f"DeepFM (MLP 256-128) over {s['fields']} fields x {s['ids_per_field']:,} ids, dim {s['dim']}, Zipf ids, one thread; "
             f"each method at {s['budget_fraction']} of the full {s['full_bytes']:,} table bytes, exported with `embslim export` and "
             "loaded through its `serve.py`. Latency of one call (p50 / p99, ms) and the ratio of p50 to the exported `full` model at "
             "full bytes, timed call by call alternating with it in the same run (the machine is shared: the ratios are what count). "
             "Weights are untrained: collisionless has no live ids yet and magnitude/pep have not pruned (bytes / full shows it).", "",
             "| method | bytes / full | batch 1 p50 / p99 ms | ratio | batch 64 p50 / p99 ms | ratio | batch 4096 p50 / p99 ms | ratio | rows/s at 4096 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        if "skipped" in row:
            lines.append(f"| `{row['method']}` | skipped: {row['skipped']} | | | | | | | |")
            continue
        cells = []
        for size in SIZES:
            r = row["sizes"][str(size)]
            cells += [f"{r['method']['p50_ms']:.3f} / {r['method']['p99_ms']:.3f}", f"{r['p50_ratio']:.2f}"]
        lines.append(f"| `{row['method']}` | {row['bytes_over_full']:.3f} | " + " | ".join(cells)
                     + f" | {row['sizes']['4096']['method']['rows_per_s']:,.0f} |")
    full = [r for r in record["rows"] if r.get("method") == "full"]
    if full:
        f = full[0]["sizes"]
        lines += ["", "`full` at full bytes (the baseline, measured alongside `full`'s own row): " + ", ".join(
            f"batch {size}: p50 {f[str(size)]['full']['p50_ms']:.3f} ms, {f[str(size)]['full']['rows_per_s']:,.0f} rows/s" for size in SIZES)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
