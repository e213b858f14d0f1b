"""Lookup throughput of every registered embedding method, against the full table measured in the same run.

Criteo-shaped ids: 26 single-valued fields of 100,000 ids (Zipf), dim 16, batch 4096. Each method
is built at 0.1 of the full table's bytes (converters convert a freshly initialised full table;
methods built without a budget at dim 16), then timed on the forward lookup alone and on forward
plus backward (gradients into its tables, no optimiser step). Figures are samples/s and ratios to
`full` at full bytes measured in the same process: the machine is shared, so only the ratios within
one run mean anything.

    python bench/lookup_throughput.py [--steps 10] [--out [DIR]]   # DIR: benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from embslim.bench.report import machine_line
from embslim.data.fields import FieldSpec
from embslim.data.synthetic import zipf_ids
from embslim.embeddings import EmbeddingConfig, FeatureEmbedding, SparseBatch, create_embedding, list_embeddings, method_info
from embslim.embeddings.full import full_bytes
from embslim.errors import ConfigError

FIELDS, ROWS, DIM, BATCH, BUDGET = 26, 100_000, 16, 4096, 0.1
DISTINCT_BATCHES = 4


def criteo_shaped_batches(seed: int = 0) -> tuple[list[FieldSpec], list[SparseBatch]]:
    """Fields with Zipf counts and a few batches of Zipf ids (cycled, so every step reads fresh-looking rows)."""
    rng = np.random.default_rng(seed)
    ids = np.stack([zipf_ids(rng, ROWS, BATCH * DISTINCT_BATCHES, 1.05) for _ in range(FIELDS)], axis=1)
    fields = [FieldSpec(f"C{i}", ROWS, np.bincount(ids[:, i], minlength=ROWS)) for i in range(FIELDS)]
    batches = [SparseBatch(torch.from_numpy(ids[k * BATCH:(k + 1) * BATCH]), {}, torch.zeros(BATCH)) for k in range(DISTINCT_BATCHES)]
    return fields, batches


def build(method: str, fields: list[FieldSpec], budget_bytes: int | None) -> FeatureEmbedding:
    """The method at the budget if it is built from one, else at dim 16."""
    budget = budget_bytes if method_info(method).budgeted else None
    return create_embedding(fields, EmbeddingConfig(method, dim=DIM, budget_bytes=budget))


def samples_per_second(emb: FeatureEmbedding, batches: list[SparseBatch], steps: int, backward: bool) -> float:
    """Mean rate over `steps` lookups after one warm-up; with backward, gradients flow into the tables."""
    start = 0.0
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        if backward:
            sum(v.sum() for v in emb(batch)).backward()
            emb.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                emb(batch)
    return steps * BATCH / (time.perf_counter() - start)


def measure(method: str, fields: list[FieldSpec], batches: list[SparseBatch], budget_bytes: int | None, steps: int) -> dict:
    try:
        emb = build(method, fields, budget_bytes)
    except ConfigError as exc:
        return {"method": method, "status": "skipped", "reason": str(exc)}
    trainable = any(p.requires_grad for p in emb.parameters())
    return {"method": method, "status": "ok", "bytes": emb.memory_bytes("serve"),
            "forward": samples_per_second(emb, batches, steps, backward=False),
            "forward_backward": samples_per_second(emb, batches, steps, backward=True) if trainable else None}


def markdown(record: dict) -> str:
    lines = [f"# Lookup throughput ({record['date']})", "", record["machine"], "", f"Command: `{record['command']}`", "",
             f"{FIELDS} fields x {ROWS:,} ids (Zipf), dim {DIM}, batch {BATCH}, budget {BUDGET} of the full {record['full_bytes']:,} bytes; "
             "samples/s and the ratio to `full` at full bytes measured in the same run.", "",
             "| method | bytes / full | forward samples/s | ratio | forward+backward samples/s | ratio |", "|---|---|---|---|---|---|"]
    for r in record["results"]:
        if r["status"] != "ok":
            lines.append(f"| `{r['method']}` | skipped: {r['reason']} | | | | |")
            continue
        fb = r["forward_backward"]
        fb_cells = f"{fb:,.0f} | {r['forward_backward_ratio']:.2f}" if fb is not None else "— (no autograd parameters) | —"
        lines.append(f"| `{r['label']}` | {r['bytes'] / record['full_bytes']:.3f} | {r['forward']:,.0f} | {r['forward_ratio']:.2f} | {fb_cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed batches per method and mode (after one warm-up)")
    parser.add_argument("--out", type=Path, nargs="?", const=Path("benchmarks/results"), default=None,
                        help="write lookup_throughput.json and .md to this folder (default benchmarks/results)")
    args = parser.parse_args()
    torch.manual_seed(0)
    fields, batches = criteo_shaped_batches()
    full = full_bytes(fields, [DIM] * FIELDS)
    baseline = {**measure("full", fields, batches, None, args.steps), "label": "full (baseline, full bytes)"}
    results = [baseline] + [{**measure(m, fields, batches, int(BUDGET * full), args.steps), "label": m} for m in list_embeddings()]
    for r in results:
        if r["status"] == "ok":
            r["forward_ratio"] = r["forward"] / baseline["forward"]
            if r["forward_backward"] is not None:
                r["forward_backward_ratio"] = r["forward_backward"] / baseline["forward_backward"]
    record = {"date": time.strftime("%Y-%m-%d"), "machine": machine_line(), "threads": torch.get_num_threads(),
              "command": f"python bench/lookup_throughput.py --steps {args.steps}", "full_bytes": full, "results": results}
    text = markdown(record)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lookup_throughput.json").write_text(json.dumps(record, indent=1))
        (args.out / "lookup_throughput.md").write_text(text)


if __name__ == "__main__":
    main()
