"""Online training on raw ids: `collisionless` against a static hashed table of the same bytes, progressive validation.

DeepFM (dim 16, the ctr recipe's lr and L2, one pass, `--batch-size`) is trained online (`embslim train --stream
--online`: each chunk scored, then trained on) over
  1. the drifting generated stream (`synthetic-criteo`, `--rows` rows in chunks of `--chunk-rows`, `--drift`), and
  2. the 10,000 real Criteo rows in file order (chunks of 1,000),
with each method given the same cap on what the training process holds for its table, optimiser moments aside
(`--budget`, `--criteo-budget`): `collisionless` (exact map, admission, expiry), `hash` (static hashed table) and
`full` on hashed ids modulo the rows per field that fit the cap (a static table indexed by `hash mod rows`).
Seeds 0..`--seeds`-1 (model init, shuffling within chunks, the methods' salts); one data stream each.

Collisionless' levers (admission threshold, expiry window, when_full) are chosen before the comparison on a
*validation stream*: the same generator with another seed (another planted model, other hot ids), two seeds, by
mean progressive AUC; the comparison then runs the chosen setting and the defaults on the test stream.

Every run is its own process (`--worker`), so each one's RSS is its own. Writes, under --out-dir:
results.json (every run: settings, progressive metrics, per-chunk records), report.md, online.png; each run's
own results.json, online.png and embedding go under --runs-dir.

    python bench/online_collisionless.py [--rows 500000] [--chunk-rows 50000] [--drift 0.3] [--budget 16MiB]
                                         [--criteo-budget 512KiB] [--seeds 3] [--batch-size 1024]
                                         [--out-dir benchmarks/results/online-collisionless]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

LEVERS = {  # collisionless settings tried on the validation stream
    "defaults (min_count 5, no expiry, wait)": {},
    "min_count 5, expiry": {"expire_steps": "EXPIRE"},
    "min_count 2, expiry": {"min_count": 2, "expire_steps": "EXPIRE"},
    "min_count 5, evict": {"when_full": "evict"},
}


# -- one run, in its own process -----------------------------------------------------------------------------------

def worker(spec: dict, out: Path) -> None:
    import numpy as np

    from embslim.data.registry import get_source, resolve_path
    from embslim.data.stream import rechunk, synthetic_chunks, text_chunks
    from embslim.data.synthetic import synthetic_config
    from embslim.embeddings import EmbeddingConfig, method_info
    from embslim.models import ModelOptions
    from embslim.train.online import run_online
    from embslim.train.recipes import model_options, recipe
    from embslim.train.run import RunConfig
    from embslim.train.trainer import TrainConfig

    import torch

    torch.set_num_threads(1)
    if spec["stream"] == "synthetic-criteo":
        data = replace(synthetic_config("synthetic-criteo", spec["rows"]), seed=spec["data_seed"])
        source = synthetic_chunks(data, spec["chunk_rows"], spec["drift"])
    else:
        source = rechunk(text_chunks("criteo", resolve_path(get_source("criteo"), None)), spec["chunk_rows"])
    source.name = spec["stream"]
    defaults = recipe("deepfm", "ctr")
    train = TrainConfig(epochs=1, lr=defaults["lr"], batch_size=spec["batch_size"], embedding_l2=defaults["embedding_l2"],
                        seed=spec["seed"], progress=False)
    seeded = "seed" in {f.name for f in fields(method_info(spec["method"]).settings)}
    options = {**spec["options"], **({"seed": spec["seed"]} if seeded else {})}
    emb = EmbeddingConfig(spec["method"], 16, None, spec["budget"], defaults.get("init_std", 0.01), options)
    config = RunConfig("deepfm", emb, ModelOptions.from_dict(model_options(defaults)), train)
    results = run_online(source, config, out, spec["id_space"])
    if spec["method"] == "full" and results["memory"]["max_held_bytes"] > spec["cap"]:
        raise SystemExit(f"full on hashed ids holds {results['memory']['max_held_bytes']} bytes, over the cap {spec['cap']}")
    assert np.isfinite(results["metrics"]["progressive"]["auc"])


def run(spec: dict, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec), "--out-dir", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"run {spec} failed:\n{output}")
    r = json.loads((out / "results.json").read_text())
    keep = ("serve_bytes", "train_bytes", "held_bytes", "live_rows", "capacity", "rss_mb", "auc", "logloss", "rows", "first_row")
    return {"spec": spec, "wall_s": time.perf_counter() - t0, "peak_rss_mb": usage.ru_maxrss / 1024,
            "metrics": r["metrics"], "memory": r["memory"], "embedding": {k: r["embedding"][k] for k in ("method", "bytes", "train_bytes", "settings")},
            "timing": r["timing"], "chunks": [{k: c[k] for k in keep if k in c} for c in r["chunks"]]}


# -- the comparison -----------------------------------------------------------------------------------------------

def methods(cap: int, n_fields: int, collisionless: dict[str, dict]) -> dict[str, dict]:
    """name -> (method, budget, options, id_space) at one cap."""
    out = {name: {"method": "collisionless", "budget": cap, "options": opts, "id_space": 1 << 20} for name, opts in collisionless.items()}
    out["hash"] = {"method": "hash", "budget": cap, "options": {}, "id_space": 1 << 20}
    out["full on hashed ids"] = {"method": "full", "budget": None, "options": {}, "id_space": cap // (n_fields * 16 * 4) - 1}  # -1: offsets
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(runs: list[dict]) -> dict:
    """Per method: progressive AUC / logloss (after the first chunk, and all rows) mean and std over seeds, bytes."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["name"] for r in runs):
        rs = [r for r in runs if r["name"] == name]
        after = [r["metrics"]["progressive_after_first_chunk"] for r in rs]
        every = [r["metrics"]["progressive"] for r in rs]
        out[name] = {"seeds": len(rs),
                     "auc": mean_std([m["auc"] for m in after]), "logloss": mean_std([m["logloss"] for m in after]),
                     "auc_all_rows": mean_std([m["auc"] for m in every]),
                     "auc_per_seed": [m["auc"] for m in after],
                     "max_held_bytes": max(r["memory"]["max_held_bytes"] for r in rs),
                     "max_serve_bytes": max(r["memory"]["max_serve_bytes"] for r in rs),
                     "max_train_bytes": max(r["memory"]["max_train_bytes"] for r in rs),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                     "train_samples_per_second": mean_std([r["timing"]["train_samples_per_second"] for r in rs])[0]}
    return out


def paired(runs: list[dict], a: str, b: str) -> dict:
    """AUC of a minus b per seed (same seed, same stream): mean, std, and how many seeds a wins."""
    by = {(r["name"], r["spec"]["seed"]): r["metrics"]["progressive_after_first_chunk"]["auc"] for r in runs}
    seeds = sorted(s for n, s in by if n == a and (b, s) in by)
    d = [by[(a, s)] - by[(b, s)] for s in seeds]
    m, sd = mean_std(d)
    return {"a": a, "b": b, "diff_mean": m, "diff_std": sd, "wins": sum(x > 0 for x in d), "seeds": len(d)}


def table(summary: dict, cap: int) -> list[str]:
    lines = [f"| method (cap {cap:,} bytes held) | progressive AUC (after chunk 1) | logloss | AUC, all rows | held max | serve max | train max | peak RSS | samples/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['auc'][0]:.4f} ± {s['auc'][1]:.4f} | {s['logloss'][0]:.4f} ± {s['logloss'][1]:.4f} | "
                     f"{s['auc_all_rows'][0]:.4f} ± {s['auc_all_rows'][1]:.4f} | {s['max_held_bytes']:,} | {s['max_serve_bytes']:,} | "
                     f"{s['max_train_bytes']:,} | {s['peak_rss_mb']:,.0f} MB | {s['train_samples_per_second']:,.0f} |")
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("synthetic", "criteo") if p in report]
    fig, axes = plt.subplots(2, len(parts), figsize=(7 * len(parts), 7), squeeze=False)
    for col, part in enumerate(parts):
        runs = [r for r in report[part]["runs"] if r["spec"]["seed"] == 0]
        top, bottom = axes[0][col], axes[1][col]
        for i, r in enumerate(runs):
            x, color = [(c["first_row"] + c["rows"]) / 1e6 for c in r["chunks"]], f"C{i}"  # one colour per method in both panels
            top.plot(x, [c["auc"] if c["auc"] is not None else float("nan") for c in r["chunks"]], marker="o", ms=3, color=color, label=r["name"])
            bottom.plot(x, [c["held_bytes"] / 2**20 for c in r["chunks"]], color=color, label=f"{r['name']}: held")
            if "live_rows" in r["chunks"][0]:
                bottom.plot(x, [c["serve_bytes"] / 2**20 for c in r["chunks"]], ls="--", color=color, label=f"{r['name']}: serve")
        top.set_title(f"{part}: chunk AUC, scored before training on it (seed 0)", fontsize=9)
        top.set_ylabel("AUC")
        top.legend(fontsize=7)
        bottom.axhline(report[part]["cap_bytes"] / 2**20, color="red", ls=":", lw=1, label="cap")
        bottom.set_ylabel("MiB")
        bottom.set_xlabel("rows seen (millions)")
        bottom.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from embslim.budget import parse_budget

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--chunk-rows", type=int, default=50_000)
    p.add_argument("--drift", type=float, default=0.3)
    p.add_argument("--budget", default="16MiB")
    p.add_argument("--criteo-budget", default="512KiB")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--expire-chunks", type=float, default=2.0, help="expiry window of the expiry levers, in chunks of steps")
    p.add_argument("--skip-levers", help="JSON collisionless settings to use instead of choosing them on the validation stream")
    p.add_argument("--only", choices=["synthetic", "criteo"])
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/online-collisionless"))
    p.add_argument("--runs-dir", type=Path, default=Path("/tmp/online-collisionless-runs"), help="each run's own outputs (not kept)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker), args.out_dir)
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = args.runs_dir
    cap = parse_budget(args.budget, 1 << 62)
    expire = max(1, round(args.expire_chunks * args.chunk_rows / args.batch_size))
    levers = {k: {o: expire if v == "EXPIRE" else v for o, v in opts.items()} for k, opts in LEVERS.items()}
    base = {"batch_size": args.batch_size, "cap": cap}
    synth = {"stream": "synthetic-criteo", "rows": args.rows, "chunk_rows": args.chunk_rows, "drift": args.drift, **base}
    report: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "threads": 1, "command": " ".join(sys.argv),
                    "held": "every method's cap is on the bytes its training process holds for the table, optimiser moments aside"}

    def go(part: str, name: str, spec: dict) -> dict:
        tag = f"{part}-{name.replace(' ', '_').replace(',', '')}-seed{spec['seed']}"
        r = {"name": name, **run(spec, runs_dir / tag)}
        print(json.dumps({"part": part, "name": name, "seed": spec["seed"], "auc": r["metrics"]["progressive_after_first_chunk"]["auc"],
                          "held": r["memory"]["max_held_bytes"], "wall_s": round(r["wall_s"], 1)}), flush=True)
        return r

    if args.only in (None, "synthetic"):
        if args.skip_levers:
            chosen_name, chosen = "chosen (given)", json.loads(args.skip_levers)
            report["levers"] = {"given": chosen}
        else:
            val = []
            for name, opts in levers.items():
                m = methods(cap, 26, {name: opts})[name]
                for seed in (0, 1):
                    val.append(go("validation", name, {**synth, **m, "data_seed": 1, "seed": seed}))
            vs = summarise(val)
            chosen_name = max(vs, key=lambda k: vs[k]["auc"][0])
            chosen = levers[chosen_name]
            report["levers"] = {"stream": "synthetic-criteo with generator seed 1 (test stream: seed 0)", "seeds": [0, 1],
                                "expire_steps": expire, "summary": vs, "chosen": chosen_name, "settings": chosen}
        names = {f"collisionless ({chosen_name})": chosen}
        if chosen:
            names["collisionless (defaults)"] = {}
        runs = [go("synthetic", name, {**synth, **m, "data_seed": 0, "seed": seed})
                for seed in range(args.seeds) for name, m in methods(cap, 26, names).items()]
        first = next(iter(names))
        report["synthetic"] = {"cap_bytes": cap, "stream": synth, "summary": summarise(runs),
                               "paired": [paired(runs, first, "hash"), paired(runs, first, "full on hashed ids")], "runs": runs}
    if args.only in (None, "criteo"):
        ccap = parse_budget(args.criteo_budget, 1 << 62)
        chosen = report.get("levers", {}).get("settings", report.get("levers", {}).get("given", {}))
        names = {"collisionless (chosen)": chosen} if chosen else {"collisionless (defaults)": {}}
        if chosen:
            names["collisionless (defaults)"] = {}
        spec = {"stream": "criteo", "chunk_rows": 1000, "batch_size": min(args.batch_size, 256), "cap": ccap}
        runs = [go("criteo", name, {**spec, **m, "data_seed": 0, "seed": seed})
                for seed in range(args.seeds) for name, m in methods(ccap, 39, names).items()]
        first = next(iter(names))
        report["criteo"] = {"cap_bytes": ccap, "stream": spec, "summary": summarise(runs),
                            "paired": [paired(runs, first, "hash"), paired(runs, first, "full on hashed ids")], "runs": runs}
    (args.out_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out_dir / "online.png")
    lines = [f"# Online collisionless vs a static hashed table ({report['date']}, {report['cpus']} CPUs, 1 thread)", "",
             f"`{report['command']}`", "", report["held"] + ".", ""]
    if "levers" in report and "summary" in report["levers"]:
        lines += ["## Levers, on the validation stream (generator seed 1, seeds 0-1)", "",
                  *table(report["levers"]["summary"], cap), "", f"Chosen: {report['levers']['chosen']}.", ""]
    for part in ("synthetic", "criteo"):
        if part in report:
            lines += [f"## {part}: progressive validation, seeds 0-{args.seeds - 1} (mean ± std)", "", *table(report[part]["summary"], report[part]["cap_bytes"]), ""]
            for pr in report[part]["paired"]:
                lines.append(f"- {pr['a']} minus {pr['b']}: AUC {pr['diff_mean']:+.4f} ± {pr['diff_std']:.4f} (paired by seed), "
                             f"higher in {pr['wins']} of {pr['seeds']} seeds")
            lines.append("")
    (args.out_dir / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
