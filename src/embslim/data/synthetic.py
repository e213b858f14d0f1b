"""The built-in dataset: generated CTR data with a planted ground-truth model.

Each field f draws its ids from a Zipf law over `cardinalities[f]` values. Every
value v of field f has a latent vector u_f(v) in R^K whose coordinates beyond the
field's planted rank r_f are zero (the others are standard normal), and a first-order
weight w_f(v) (zero when r_f = 0).
The click logit is

    logit = b + sum_f w_f(v_f) + sum_{f<g} <u_f(v_f), u_g(v_g)>,

rescaled to a fixed standard deviation, and the label is Bernoulli(sigmoid(logit)).
With `tail_decay` > 0 the k-th most popular value's u and w are scaled by k^-tail_decay:
rare ids then carry little signal, as in production logs, where millions of ids are
seen a handful of times and no model can learn them.
So a field's interactions need r_f dimensions (at most: a coordinate that no other
field has meets no partner, so the largest rank is capped by the second largest),
plus one for w_f in models that read it from the embedding; a rank-0 field is pure
noise, and a dimension search should rank the fields by r_f: the right answer is
known. No download, no licence: the generator is part of embslim.

Two named shapes: `synthetic` (8 small fields, the default dataset) and
`synthetic-criteo` (the 26 categorical fields of Criteo's display-ads data with
their real cardinalities capped at 1M, 2M rows), where the embedding tables hold
millions of rows and dominate model memory as they do in production.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from sklearn.metrics import roc_auc_score

from embslim.data.encode import RawColumns


@dataclass(frozen=True)
class SyntheticConfig:
    rows: int = 200_000
    cardinalities: tuple[int, ...] = (1000, 1000, 500, 500, 300, 300, 100, 100)
    ranks: tuple[int, ...] = (16, 12, 8, 6, 4, 2, 1, 0)
    zipf: float = 1.05
    logit_std: float = 2.0
    base_rate: float = 0.3
    seed: int = 0
    tail_decay: float = 0.0


GENERATOR_VERSION = 2  # bump when generate() changes its output, to invalidate cached sets

# Distinct values of Criteo DAC's C1..C26 over the full training set, capped at 1M.
CRITEO_CARDINALITIES = (1460, 583, 1_000_000, 1_000_000, 305, 24, 12517, 633, 3, 93145, 5683, 1_000_000, 3194,
                        27, 14992, 1_000_000, 10, 5652, 2173, 4, 1_000_000, 18, 15, 286181, 105, 142572)
CRITEO_RANKS = (8, 4, 16, 12, 2, 1, 6, 2, 0, 8, 4, 16, 2, 1, 6, 12, 0, 4, 2, 0, 8, 1, 0, 6, 1, 4)

SYNTHETIC_SHAPES: dict[str, SyntheticConfig] = {
    "synthetic": SyntheticConfig(),
    "synthetic-criteo": SyntheticConfig(rows=2_000_000, cardinalities=CRITEO_CARDINALITIES, ranks=CRITEO_RANKS, zipf=0.8,
                                        tail_decay=0.5),
    # synthetic-criteo with its third field (C3) at 10^8 ids: a 6.4 GB table at dim 16; streamed only (train --stream)
    "synthetic-criteo-1e8": SyntheticConfig(rows=2_000_000, cardinalities=(1460, 583, 100_000_000) + CRITEO_CARDINALITIES[3:],
                                            ranks=CRITEO_RANKS, zipf=0.8, tail_decay=0.5),
}
STREAM_ONLY = {"synthetic-criteo-1e8"}  # shapes whose fields are too large to generate in memory


def synthetic_config(name: str = "synthetic", rows: int | None = None) -> SyntheticConfig:
    """The generator settings of a named shape, optionally with another number of rows."""
    config = SYNTHETIC_SHAPES[name]
    return replace(config, rows=rows) if rows else config


def zipf_ids(rng: np.random.Generator, n_values: int, size: int, exponent: float) -> np.ndarray:
    """Draw `size` ids in [0, n_values) with P(k) proportional to (k+1)^-exponent."""
    p = np.arange(1, n_values + 1, dtype=np.float64) ** -exponent
    return rng.choice(n_values, size=size, p=p / p.sum())


def generate(config: SyntheticConfig = SyntheticConfig()) -> RawColumns:
    """Generate the dataset; `info` holds each field's planted rank and the AUC of the true probabilities."""
    if len(config.cardinalities) != len(config.ranks):
        raise ValueError("cardinalities and ranks need one entry per field")
    rng = np.random.default_rng(config.seed)
    k = max(max(config.ranks), 1)
    names = [f"field{i}" for i in range(len(config.ranks))]
    ids, vectors, weights = [], [], []
    for n, r in zip(config.cardinalities, config.ranks):
        ids.append(zipf_ids(rng, n, config.rows, config.zipf))
        scale = np.arange(1, n + 1, dtype=np.float64) ** -config.tail_decay
        u = rng.standard_normal((n, k)) * scale[:, None]
        u[:, r:] = 0.0
        vectors.append(u)
        weights.append(rng.standard_normal(n) * 0.5 * (r > 0) * scale)
    z = np.zeros(config.rows)
    total = np.zeros((config.rows, k))
    for f in range(len(names)):
        z += weights[f][ids[f]]
        u = vectors[f][ids[f]]
        total += u
        z -= 0.5 * np.einsum("ij,ij->i", u, u)
    z += 0.5 * np.einsum("ij,ij->i", total, total)  # sum over field pairs f<g of <u_f, u_g>
    logit = np.log(config.base_rate / (1 - config.base_rate)) + config.logit_std * (z - z.mean()) / z.std()
    prob = 1 / (1 + np.exp(-logit))
    label = (rng.random(config.rows) < prob).astype(np.float32)
    columns = {name: col for name, col in zip(names, ids)}
    info = {
        "generator": "embslim.data.synthetic",
        "config": {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in config.__dict__.items()},
        "planted": {name: {"rank": r, "cardinality": n} for name, r, n in zip(names, config.ranks, config.cardinalities)},
        "oracle_auc": float(roc_auc_score(label, prob)) if 0 < label.sum() < len(label) else None,
    }
    return RawColumns("synthetic", columns, label, info=info)
