"""What the entry-pruning methods pay per step on large tables, against the plain whole-table way, in one run.

Criteo-shaped tables: the 26 cardinalities of `synthetic-criteo` (89M entries at dim 16). Two pieces are timed:

- `pep_mask_step`: PEP's work after every search step, re-deriving its mask from the thresholds and counting the
  served bytes (to stop at the budget): embslim's `refresh_masks` + `mask_bytes` against the whole-table way
  (|table| > threshold into a new mask, copied in; a bool `sum` and `any(dim=0)` per table).
- `dsl_exchange`: one DSL drop-and-regrow exchange at the given density, embslim's (only positive regrowth scores
  sorted) against a stable descending argsort of every candidate; both give the same masks (checked).

Each is timed `--repeats` times, alternating; the figure is the best of each and their ratio. The machine may be
shared, so only the ratios mean anything.

    OMP_NUM_THREADS=1 python bench/mask_step_cost.py [--repeats 3] [--density 0.5] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import embslim.embeddings.dsl as dsl
from embslim.bench.report import machine_line
from embslim.data.fields import FieldSpec
from embslim.data.synthetic import CRITEO_CARDINALITIES
from embslim.embeddings import EmbeddingConfig, create_embedding
from embslim.embeddings.full import full_bytes
from embslim.embeddings.sparse_storage import cheapest_form, mask_bytes

DIM = 16


def criteo_fields() -> list[FieldSpec]:
    return [FieldSpec(f"C{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(CRITEO_CARDINALITIES)]


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def pep_mask_step(repeats: int) -> dict:
    emb = create_embedding(criteo_fields(), EmbeddingConfig("pep", DIM))

    def whole_table() -> int:
        thr = emb.thresholds()
        for i, (table, mask) in enumerate(zip(emb.tables, emb.masks())):
            mask.copy_(table.detach().abs() > thr[i])
        return sum(cheapest_form(m.shape[0], m.shape[1], int(m.sum()), int(m.any(dim=0).sum()))[1] for m in emb.masks())

    def embslim() -> int:
        emb.refresh_masks()
        return sum(mask_bytes(m) for m in emb.masks())

    assert whole_table() == embslim()
    old, new = zip(*[(best_of(whole_table, 1), best_of(embslim, 1)) for _ in range(repeats)])
    return {"entries": emb.total_entries(), "whole_table_s": min(old), "embslim_s": min(new), "ratio": min(old) / min(new)}


def dsl_exchange(repeats: int, density: float) -> dict:
    fields = criteo_fields()
    emb = create_embedding(fields, EmbeddingConfig("dsl", DIM, budget_bytes=int(density * full_bytes(fields, [DIM] * len(fields)))))
    gen = torch.Generator().manual_seed(0)
    for score in emb.scores():  # what a 100-step interval at batch 512 leaves: gradients on the rows it touched
        rows = torch.randint(0, score.shape[0], (min(score.shape[0], 51_200),), generator=gen)
        score[rows] = torch.randn(len(rows), DIM, generator=gen)
    scores = [s.clone() for s in emb.scores()]
    masks = [m.clone() for m in emb.masks()]
    fast = dsl.largest_first

    def run(order_fn: Callable) -> list[torch.Tensor]:
        for s, saved in zip(emb.scores(), scores):
            s.copy_(saved)
        emb.apply_masks(masks)
        emb.updates_done = 0
        dsl.largest_first = order_fn
        try:
            emb.exchange(0.5)
        finally:
            dsl.largest_first = fast
        return [m.clone() for m in emb.masks()]

    def sort_all(values: torch.Tensor, n: int) -> torch.Tensor:
        return torch.argsort(values, descending=True, stable=True)[:n]

    same = all(torch.equal(a, b) for a, b in zip(run(sort_all), run(fast)))
    old, new = zip(*[(best_of(lambda: run(sort_all), 1), best_of(lambda: run(fast), 1)) for _ in range(repeats)])
    return {"density": density, "kept": emb.kept(), "sort_all_s": min(old), "embslim_s": min(new), "ratio": min(old) / min(new),
            "same_masks": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.5, help="DSL's kept share of the full table's bytes")
    parser.add_argument("--out", type=Path, help="write the record as JSON here")
    args = parser.parse_args()
    record = {"date": time.strftime("%Y-%m-%d"), "machine": machine_line(), "threads": torch.get_num_threads(),
              "command": " ".join(["python bench/mask_step_cost.py"] + sys.argv[1:]),
              "pep_mask_step": pep_mask_step(args.repeats), "dsl_exchange": dsl_exchange(args.repeats, args.density)}
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
