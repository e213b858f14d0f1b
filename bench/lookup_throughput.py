"""Lookup throughput of every registered embedding method, against the full table measured in the same run.

Criteo-shaped ids: 26 single-valued fields of 100,000 ids, dim 16, batch 4096, drawn Zipf-distributed
(frequent ids hot in cache) and uniformly (every lookup a cold row), each its own table. Each method
is built at 0.1 of the full table's bytes (converters convert a freshly initialised full table;
methods built without a budget at dim 16), then timed on the forward lookup alone and on forward
plus backward (a fixed dense gradient into each output, as a network sends back; no optimiser step) and on a training step of the tables
(forward, backward and the trainer's optimisers: SparseAdam on sparse tables, Adam on the rest). `dnis-pruned` is what a DNIS search
serves: the blockwise tables of the searched layout, here pruned to the budget by seeded random
scores times block frequency (columns kept differ per block, unlike MDE's prefixes). Figures are
samples/s and ratios to `full` at full bytes measured in the same process, alternating between
`full` and each method and keeping each one's best of `--repeats`: the machine is shared, so only
the ratios within one run mean anything.

    python bench/lookup_throughput.py [--steps 10] [--repeats 3] [--ids zipf,uniform] [--methods full,mde,...] [--out [DIR]]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from embslim.bench.report import machine_line
from embslim.data.fields import FieldSpec
from embslim.data.synthetic import zipf_ids
from embslim.embeddings import EmbeddingConfig, FeatureEmbedding, SparseBatch, create_embedding, list_embeddings, method_info
from embslim.embeddings.blockwise import BlockwiseEmbedding
from embslim.embeddings.full import full_bytes
from embslim.errors import ConfigError
from embslim.search.prune import prune_to_budget, value_per_byte

FIELDS, ROWS, DIM, BATCH, BUDGET = 26, 100_000, 16, 4096, 0.1
DISTINCT_BATCHES = 4


def criteo_shaped_batches(seed: int = 0, ids: str = "zipf") -> tuple[list[FieldSpec], list[SparseBatch]]:
    """Fields with Zipf counts and a few batches of ids (cycled, so every step reads fresh-looking rows),
    Zipf-distributed like the counts or uniform over each field's ids."""
    rng = np.random.default_rng(seed)
    zipf = np.stack([zipf_ids(rng, ROWS, BATCH * DISTINCT_BATCHES, 1.05) for _ in range(FIELDS)], axis=1)
    fields = [FieldSpec(f"C{i}", ROWS, np.bincount(zipf[:, i], minlength=ROWS)) for i in range(FIELDS)]
    ids = zipf if ids == "zipf" else rng.integers(0, ROWS, size=zipf.shape)
    batches = [SparseBatch(torch.from_numpy(ids[k * BATCH:(k + 1) * BATCH]), {}, torch.zeros(BATCH)) for k in range(DISTINCT_BATCHES)]
    return fields, batches


def build(method: str, fields: list[FieldSpec], budget_bytes: int | None) -> FeatureEmbedding:
    """The method at the budget if it is built from one, else at dim 16; `dnis-pruned`: see the module notes;
    `NAME-grouped` (mde, dnis-pruned): that layout looked up without gradients by the width-grouped path the
    training lookup takes, instead of the one-gather window lookup (a before/after within one run)."""
    if method.endswith("-grouped"):
        emb = build(method.removesuffix("-grouped"), fields, budget_bytes)
        emb.window_lookup = False
        return emb
    if method == "dnis-pruned":
        return dnis_pruned(fields, budget_bytes)
    budget = budget_bytes if method_info(method).budgeted else None
    return create_embedding(fields, EmbeddingConfig(method, dim=DIM, budget_bytes=budget))


def dnis_pruned(fields: list[FieldSpec], budget_bytes: int, seed: int = 0) -> FeatureEmbedding:
    """The blockwise tables a DNIS search serves, its blocks pruned to the budget by random scores times frequency."""
    search = create_embedding(fields, EmbeddingConfig("dnis", dim=DIM))
    starts = search.field_block_starts()
    rng = np.random.default_rng(seed)
    scores = value_per_byte({n: rng.random((len(s) - 1, DIM)) for n, s in starts.items()}, starts, {f.name: f.counts for f in fields})
    return BlockwiseEmbedding(fields, prune_to_budget(scores, starts, DIM, budget_bytes), DIM)


def optimizers(emb: FeatureEmbedding) -> list[torch.optim.Optimizer]:
    """What the trainer uses: SparseAdam on the sparse tables, Adam on any other trainable parameter."""
    sparse = {id(p) for p in emb.sparse_parameters()}
    dense = [p for p in emb.parameters() if p.requires_grad and id(p) not in sparse]
    return ([torch.optim.SparseAdam(emb.sparse_parameters(), lr=1e-3)] if sparse else []) + ([torch.optim.Adam(dense, lr=1e-3)] if dense else [])


def upstream_gradient(cache: dict, output: torch.Tensor) -> torch.Tensor:
    """A fixed dense gradient for an output of this shape, as a network above the tables sends back (`.sum()`'s
    stride-0 gradient would send some kernels, batched matmuls among them, down slow paths no model takes)."""
    key = (tuple(output.shape), output.dtype)
    if key not in cache:
        cache[key] = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(len(cache)))
    return cache[key]


def samples_per_second(emb: FeatureEmbedding, batches: list[SparseBatch], steps: int, backward: bool,
                       opts: list[torch.optim.Optimizer] | None = None) -> float:
    """Mean rate over `steps` lookups after one warm-up; with backward, gradients flow into the tables,
    and with `opts` each batch ends with their step (a training step of the tables)."""
    start, upstream = 0.0, {}
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        if backward:
            outs = emb(batch)
            torch.autograd.backward(outs, [upstream_gradient(upstream, v) for v in outs])
            for opt in opts or []:
                opt.step()
            emb.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                emb(batch)
    return steps * BATCH / (time.perf_counter() - start)


def measure(method: str, fields: list[FieldSpec], batches: list[SparseBatch], budget_bytes: int | None, steps: int,
            full: FeatureEmbedding, repeats: int) -> dict:
    """The method's rates and `full`'s, timed alternately `repeats` times (best of each), and their ratios."""
    try:
        emb = build(method, fields, budget_bytes)
    except ConfigError as exc:
        return {"method": method, "status": "skipped", "reason": str(exc)}
    trainable = any(p.requires_grad for p in emb.parameters())
    record = {"method": method, "status": "ok", "bytes": emb.memory_bytes("serve")}
    for mode, backward in (("forward", False), ("forward_backward", True), ("train_step", True)):
        if backward and not trainable:
            record[mode] = record[f"{mode}_ratio"] = None
            continue
        ours, base = 0.0, 0.0
        ours_opts, full_opts = (optimizers(emb), optimizers(full)) if mode == "train_step" else (None, None)
        for _ in range(repeats):
            base = max(base, samples_per_second(full, batches, steps, backward, full_opts))
            ours = max(ours, samples_per_second(emb, batches, steps, backward, ours_opts))
        record.update({mode: ours, f"full_{mode}": base, f"{mode}_ratio": ours / base})
    return record


def markdown(record: dict) -> str:
    lines = [f"# Lookup throughput ({record['date']})", "", record["machine"], "", f"Command: `{record['command']}`", "",
             f"{FIELDS} fields x {ROWS:,} ids, dim {DIM}, batch {BATCH}, budget {BUDGET} of the full {record['full_bytes']:,} bytes; "
             f"{record['threads']} torch threads; samples/s, and the ratio to `full` at full bytes timed alternately with "
             f"each method in the same run (best of {record['repeats']} each).", ""]
    if record.get("note"):
        lines += [record["note"], ""]
    for ids, results in record["results"].items():
        lines += [f"## {ids} ids", "", "| method | bytes / full | forward samples/s | ratio | forward+backward samples/s | ratio "
                  "| train step (SparseAdam) samples/s | ratio |", "|---|---|---|---|---|---|---|---|"]
        for r in results:
            if r["status"] != "ok":
                lines.append(f"| `{r['method']}` | skipped: {r['reason']} | | | | | | |")
                continue
            cells = [f"{r[m]:,.0f} | {r[f'{m}_ratio']:.2f}" if r[m] is not None else "— (no autograd parameters) | —"
                     for m in ("forward_backward", "train_step")]
            lines.append(f"| `{r['label']}` | {r['bytes'] / record['full_bytes']:.3f} | {r['forward']:,.0f} | {r['forward_ratio']:.2f} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed batches per method and mode (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timings of full and each method; the best of each counts")
    parser.add_argument("--ids", default="zipf,uniform", help="id distributions to run, comma-separated: zipf, uniform")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: every registered one but blockwise, whose layouts mde and dnis-pruned are)")
    parser.add_argument("--out", type=Path, nargs="?", const=Path("benchmarks/results"), default=None,
                        help="write lookup_throughput.json and .md to this folder (default benchmarks/results)")
    args = parser.parse_args()
    # `blockwise` is built from a layout: `mde` and `dnis-pruned` are its two layouts
    methods = args.methods.split(",") if args.methods else [m for m in list_embeddings() if m != "blockwise"] + ["dnis-pruned"]
    record = {"date": time.strftime("%Y-%m-%d"), "machine": machine_line(), "threads": torch.get_num_threads(), "repeats": args.repeats,
              "command": " ".join(["python bench/lookup_throughput.py"] + sys.argv[1:]), "results": {}}
    for ids in args.ids.split(","):
        torch.manual_seed(0)
        fields, batches = criteo_shaped_batches(ids=ids)
        record["full_bytes"] = full = full_bytes(fields, [DIM] * FIELDS)
        baseline = build("full", fields, None)
        record["results"][ids] = [{**measure(m, fields, batches, int(BUDGET * full), args.steps, baseline, args.repeats), "label": m}
                                  for m in methods]
    text = markdown(record)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lookup_throughput.json").write_text(json.dumps(record, indent=1))
        (args.out / "lookup_throughput.md").write_text(text)


if __name__ == "__main__":
    main()
