"""Running a benchmark grid: local worker processes by default, Ray when given an address.

Every finished cell is on disk (OUT/runs/CELL/row.json) the moment it ends, so a
killed benchmark restarts where it stopped. Progress: one bar over all cells with
the last finished cell and a tally per method.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from embslim.bench.grid import BenchSpec, Cell, cells, run_cell
from embslim.extras import require


def run_grid(spec: BenchSpec, out: Path, workers: int = 2, ray_address: str | None = None, progress: bool = True) -> list[dict]:
    """Run every cell of `spec` (skipping finished ones) and return their rows in grid order."""
    todo = cells(spec)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[Cell, dict] = {}
    tally: Counter = Counter()
    bar = tqdm(total=len(todo), desc="benchmark", unit="run", disable=not progress)

    def done(cell: Cell, row: dict) -> None:
        rows[cell] = row
        tally[cell.method] += 1
        bar.set_postfix_str(f"last {cell.name} | " + " ".join(f"{m}:{n}" for m, n in sorted(tally.items())))
        bar.update()

    finished = [c for c in todo if (out / "runs" / c.name / "row.json").exists()]
    for c in finished:
        done(c, run_cell(spec, c, out))
    pending = [c for c in todo if c not in rows]
    if ray_address:
        _run_ray(spec, pending, out, ray_address, done)
    elif workers <= 1:
        for c in pending:
            done(c, run_cell(spec, c, out))
    else:
        threads = int(os.environ.get("EMBSLIM_BENCH_THREADS", max(1, (os.cpu_count() or 1) // workers)))
        with ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            futures = {pool.submit(run_cell, spec, c, out): c for c in pending}
            for f in as_completed(futures):
                done(futures[f], f.result())
    bar.close()
    return [rows[c] for c in todo]


def _run_ray(spec: BenchSpec, pending: list[Cell], out: Path, address: str, done) -> None:
    require("ray", "--ray-address")
    import ray

    ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
             runtime_env={"env_vars": {"EMBSLIM_BENCH_THREADS": os.environ.get("EMBSLIM_BENCH_THREADS", "1")}})
    remote = ray.remote(num_cpus=1)(run_cell)
    refs = {remote.remote(spec, c, out): c for c in pending}
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        for ref in ready:
            done(refs.pop(ref), ray.get(ref))
