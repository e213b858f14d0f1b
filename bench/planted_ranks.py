"""Does a dimension search find the planted ranks? DNIS against each field's singular-value spectrum.

    python bench/planted_ranks.py --seeds 0,1,2,3,4 --out benchmarks/results/planted-ranks

On generated data whose fields need a known number of dimensions (embslim.data.synthetic), an
FM (the generator's own model family: `--model` picks another backbone) is trained to convergence, DNIS (default settings: principal-axis alignment on) searches and prunes to the budget
keeping only what its evidence supports (`fill=False`: no budget spent by the frequency prior), and the per-field kept dimensions
(averaged per training occurrence) are compared with the planted ranks by Spearman correlation.
The reviewer's baselines read the singular values of each field's trained full table (rows weighted by
training frequency): `svd-energy` gives a field the count needed for `--energy` of its own squared
spectrum; `svd-scale` counts the directions whose root-mean-square size per training occurrence is at
least `--scale` of the largest such size over all fields. Each configuration (dim, cardinalities, ranks, rows, budget) runs over every seed;
OUT/planted.json and OUT/planted.md hold the correlations, their mean and minimum; each finished seed is
kept in OUT/seeds/ and read back by a later run with the same settings (so a killed run resumes).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from embslim.bench.report import machine_line
from embslim.data import SyntheticConfig, load_dataset
from embslim.embeddings import EmbeddingConfig
from embslim.embeddings.full import full_bytes
from embslim.search.dnis import DNISConfig
from embslim.search.pipeline import search_dims
from embslim.search.report import dims_per_field, kept_dims_table
from embslim.train.run import RunConfig, build_model, train_model
from embslim.train.trainer import TrainConfig

METHODS = ("dnis", "svd-energy", "svd-scale")
CONFIGS = {
    "test": {"dim": 8, "cardinalities": (200,) * 8, "ranks": (8, 6, 5, 4, 3, 2, 1, 0), "rows": 100_000, "budget": 0.3},
    "default": {"dim": 16, "cardinalities": (1000, 1000, 500, 500, 300, 300, 100, 100), "ranks": (16, 12, 8, 6, 4, 2, 1, 0),
                "rows": 200_000, "budget": 0.3},
    "shuffled": {"dim": 16, "cardinalities": (300, 1000, 100, 500, 1000, 100, 500, 300), "ranks": (2, 0, 12, 4, 16, 1, 8, 6),
                 "rows": 200_000, "budget": 0.3},
    "other": {"dim": 12, "cardinalities": (400, 150, 800, 250, 600, 100), "ranks": (3, 10, 0, 7, 5, 1), "rows": 100_000, "budget": 0.3},
}


def spectra(model) -> list[np.ndarray]:
    """Per field: squared singular values of its trained table with rows weighted by training frequency,
    divided by the field's occurrences (the mean squared size of each principal direction per occurrence)."""
    emb = model.embedding
    out = []
    for i, f in enumerate(emb.fields):
        table = emb.field_table(i).detach().double()
        weights = torch.from_numpy(f.counts.astype(np.float64)).sqrt().unsqueeze(1)
        out.append(torch.linalg.svdvals(table * weights).numpy() ** 2 / max(f.counts.sum(), 1))
    return out


def energy_dims(spectra_: list[np.ndarray], energy: float) -> list[int]:
    """Per field: how many directions hold `energy` of its own squared spectrum."""
    return [int(np.searchsorted(np.cumsum(s) / max(s.sum(), 1e-30), energy) + 1) for s in spectra_]


def scale_dims(spectra_: list[np.ndarray], scale: float) -> list[int]:
    """Per field: how many directions are at least `scale` times the largest direction of any field (in RMS size)."""
    top = max(np.sqrt(s.max()) for s in spectra_)
    return [int((np.sqrt(s) >= scale * top).sum()) for s in spectra_]


def planted_need(ranks: tuple[int, ...]) -> list[int]:
    """Per field: the dimensions its planted model can use. Coordinate k of a field interacts only with fields whose
    rank also exceeds k, so a field uses min(rank, the largest rank among the other fields) coordinates, plus one
    for its first-order weight (which FM-style backbones read from the embedding) when its rank is above 0."""
    need = []
    for i, r in enumerate(ranks):
        partner = max((q for j, q in enumerate(ranks) if j != i), default=0)
        need.append(min(r, partner) + (r > 0))
    return need


def need_fraction(cfg: dict) -> float:
    """The planted need's share of the full table's bytes (at least one dimension per field, as DNIS keeps)."""
    need = [max(n, 1) for n in planted_need(cfg["ranks"])]
    return sum(n * c for n, c in zip(need, cfg["cardinalities"])) / (cfg["dim"] * sum(cfg["cardinalities"]))


def one_seed(cfg: dict, seed: int, energy: float, scale: float, model: str = "fm", epochs: int = 40) -> dict:
    data = load_dataset("synthetic", synthetic=SyntheticConfig(rows=cfg["rows"], cardinalities=cfg["cardinalities"], ranks=cfg["ranks"], seed=seed))
    run = RunConfig(model, EmbeddingConfig(dim=cfg["dim"]), train=TrainConfig(epochs=epochs, batch_size=512, patience=2, progress=False, seed=seed))
    full, d = build_model(data, run)
    train_model(full, d, run)
    budget = int(cfg["budget"] * full_bytes(d.table.fields, [cfg["dim"]] * len(cfg["ranks"])))
    _, sdata, _, _, layouts = search_dims(data, run, budget, DNISConfig(blocks=4, fill=False), full)
    table = kept_dims_table(layouts, {f.name: f.counts for f in sdata.table.fields})
    per_field = dims_per_field(table)
    dnis = [per_field[f.name]["per_occurrence"] for f in sdata.table.fields]
    spec = spectra(full)
    dims = {"dnis": dnis, "svd-energy": energy_dims(spec, energy), "svd-scale": scale_dims(spec, scale)}
    return {"seed": seed, **{f"{m}_dims": v for m, v in dims.items()},
            **{f"{m}_spearman": float(spearmanr(v, cfg["ranks"])[0]) for m, v in dims.items()}}


def cached_seed(out: Path, name: str, cfg: dict, seed: int, args: argparse.Namespace) -> dict:
    """One seed's result, read back from OUT/seeds/ when an earlier run (same settings) finished it."""
    key = f"{name}-b{cfg['budget']:g}-{args.model}-e{args.epochs}-energy{args.energy:g}-scale{args.scale:g}-s{seed}"
    path = out / "seeds" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    row = one_seed(cfg, seed, args.energy, args.scale, args.model, args.epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, default=list))
    tmp.replace(path)
    return row


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"any of {sorted(CONFIGS)}")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--energy", type=float, default=0.9, help="share of the squared spectrum a field's dimensions hold (SVD baseline)")
    p.add_argument("--scale", type=float, default=0.1, help="svd-scale: smallest direction kept, relative to the largest of any field")
    p.add_argument("--budget", type=float, default=None, help="share of the full bytes for every configuration (default: each one's own)")
    p.add_argument("--model", default="fm", help="the backbone trained and searched")
    p.add_argument("--epochs", type=int, default=40, help="most epochs of the full model (early stopping on validation)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    results, lines = {}, []
    chosen = {n: CONFIGS[n] if args.budget is None else {**CONFIGS[n], "budget": args.budget} for n in args.configs.split(",")}
    for name, cfg in chosen.items():
        rows = [cached_seed(args.out, name, cfg, int(s), args) for s in args.seeds.split(",")]
        need = planted_need(cfg["ranks"])
        for r in rows:
            r["need_spearman"] = {m: float(spearmanr(r[f"{m}_dims"], need)[0]) for m in METHODS}
        results[name] = {"config": cfg, "need": need, "need_fraction": need_fraction(cfg), "seeds": rows}
        for method in METHODS:
            rho = [r[f"{method}_spearman"] for r in rows]
            to_need = np.mean([r["need_spearman"][method] for r in rows])
            lines.append(f"| {name} | {cfg['budget']:g} | {need_fraction(cfg):.2f} | {method} | {np.mean(rho):.3f} | {np.min(rho):.3f} | "
                         f"{', '.join(f'{x:.2f}' for x in rho)} | {to_need:.3f} |")
        print("\n".join(lines[-len(METHODS):]), flush=True)
    budget_flag = ("" if args.budget is None else f" --budget {args.budget}") + f" --model {args.model} --epochs {args.epochs}"
    header = ["# Planted ranks: Spearman correlation of per-field dimensions with the planted ranks", "",
              f"Command: `python bench/planted_ranks.py --configs {args.configs} --seeds {args.seeds} --energy {args.energy} --scale {args.scale}{budget_flag} --out {args.out}`",
              "", machine_line(), "", "Configurations: " + "; ".join(f"{n}: {json.dumps(c)}" for n, c in chosen.items()), "",
              "`need`: the dimensions a field's planted model can use (coordinates it shares with another field, plus its",
              "first-order weight); `need bytes`: their share of the full table. Where the budget is below it, the budget,",
              "not the evidence, decides the widths.", "",
              "| config | budget | need bytes | method | mean | min | per seed | mean vs need |", "|---|---|---|---|---|---|---|---|"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "planted.json").write_text(json.dumps(results, indent=1, default=list))
    (args.out / "planted.md").write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    run()
