"""How much each (field, block, dimension) of a searched DNIS model is worth: the validation
loss it costs to drop it.

After the alpha search, dimension k of a field is set to 0, in every block, as pruning would,
and the validation loss is measured again. For a single-valued field one pass covers all its
blocks, each row's loss change charged to the block its value falls in (a row only sees its own
block); a multi-valued field costs one pass per block. The score of a pair is a lower confidence bound on its summed loss
increase, `max(0, sum(delta) - z * sqrt(n * var(delta)))`: pairs whose measured value is
within noise of zero (rare blocks, fields the model does not need) score 0 instead of
winning by chance, which magnitude scores such as E|e * alpha| cannot tell apart.
Divided by the pair's bytes, it ranks what to keep under a budget; a pair whose bound is 0 is
not kept at all beyond a block's floor (`ranking`), so the budget is an upper bound and the
search reports the bytes its evidence supports.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from embslim.data.fields import PreparedData
from embslim.embeddings.dnis import DNISEmbedding
from embslim.models.base import Recommender
from embslim.train.checkpoint import save_checkpoint
from embslim.train.objectives import Objective, create_objective
from embslim.train.trainer import TrainConfig

EVAL_BATCH = 16384
LOSS_INCREASE_FILE = "loss_increase.pt"  # in a search's folder: the pruning evidence every budget shares


class _ExampleLosses:
    """Per-example validation loss of a model on a fixed set of its objective's validation examples, in fixed batches."""

    def __init__(self, objective: Objective, indices: np.ndarray) -> None:
        self.objective = objective
        self.batches = [objective.validation_batch(indices[s:s + EVAL_BATCH]) for s in range(0, len(indices), EVAL_BATCH)]

    @torch.no_grad()
    def __call__(self) -> np.ndarray:
        self.objective.model.eval()
        return torch.cat([self.objective.example_losses(b) for b in self.batches]).double().numpy()


def _lower_bound(delta_sum: np.ndarray, delta_sq: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """max(0, sum - z * sqrt(n * var)) elementwise, from sums and sums of squares over n rows."""
    safe = np.maximum(n, 1)
    var = np.maximum(delta_sq / safe - (delta_sum / safe) ** 2, 0.0)
    return np.maximum(delta_sum - z * np.sqrt(n * var), 0.0)


@torch.no_grad()
def loss_increase(model: Recommender, data: PreparedData, z: float = 2.0, max_rows: int = 100_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per field, [blocks, width]: the validation loss increase of dropping each (block, dimension) of the
    DNIS layer, as a lower confidence bound `z` standard errors below the measured sum, clipped at 0;
    pairs alpha already pruned score 0.

    At most `max_rows` validation rows are used (a seeded sample), which bounds the cost to
    fields x width passes over that many rows.
    """
    emb: DNISEmbedding = model.embedding
    objective = create_objective(model, data, TrainConfig(seed=seed))
    n = objective.validation_size()
    indices = np.sort(np.random.default_rng([seed, 7]).choice(n, max_rows, replace=False)) if n > max_rows else np.arange(n)
    starts = emb.field_block_starts()
    row_blocks = {f.name: objective.example_blocks(indices, f.name, np.asarray(starts[f.name])) for f in emb.fields}
    return drop_increase(emb, _ExampleLosses(objective, indices), row_blocks, z)


def cached_loss_increase(model: Recommender, data: PreparedData, z: float, max_rows: int, seed: int,
                         folder: Path | None) -> tuple[dict[str, np.ndarray], float]:
    """(`loss_increase`, the seconds it took to measure), kept in `folder` (a search's folder) as LOSS_INCREASE_FILE:
    it depends on the searched model and the rows measured alone, so every budget pruned from one search, a resumed
    run and `embslim slice` read it back instead of measuring it again (a validation pass per field and dimension).
    The file holds the settings and a fingerprint of the validation rows it was measured on, and is used only when
    they match."""
    key = {"z": z, "max_rows": max_rows, "seed": seed,
           "rows": hashlib.sha1(np.ascontiguousarray(data.splits["val"]).tobytes()).hexdigest()}
    path = folder / LOSS_INCREASE_FILE if folder is not None else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=False)
        if saved.get("key") == key and "seconds" in saved:
            return saved["lower"], saved["seconds"]
    t0 = time.perf_counter()
    lower = loss_increase(model, data, z, max_rows, seed)
    seconds = time.perf_counter() - t0
    if path is not None:
        save_checkpoint({"key": key, "lower": lower, "seconds": seconds}, path)
    return lower, seconds


@torch.no_grad()
def drop_increase(emb: DNISEmbedding, losses: Callable[[], np.ndarray], row_blocks: dict[str, np.ndarray | None],
                  z: float = 2.0) -> dict[str, np.ndarray]:
    """`loss_increase` for any model: `losses()` gives the per-row validation losses of the model as its
    tables are now (the same rows, in the same order, every call); `row_blocks[field]` is, for a field with
    one value per row, the block of each row's value (one pass per dimension covers all blocks), or None
    (a multi-valued field: one pass per block and dimension, every row charged)."""
    weights = emb.tables[0]
    base = losses()
    alpha = emb.alpha
    starts = emb.field_block_starts()
    out: dict[str, np.ndarray] = {}
    for i, (f, rows) in enumerate(zip(emb.fields, emb.block_slices())):
        nb = rows.stop - rows.start
        first = int(emb.table_of(i)[1])
        own = slice(first, first + f.cardinality)
        total, squares, counts = np.zeros((nb, emb.width)), np.zeros((nb, emb.width)), np.zeros((nb, emb.width))
        if row_blocks[f.name] is None:
            groups = [(slice(starts[f.name][b], starts[f.name][b + 1]), np.full(len(base), b)) for b in range(nb)]
        else:
            groups = [(slice(0, f.cardinality), row_blocks[f.name])]
        for span, block in groups:
            values = weights[own][span]
            for k in range(emb.width):
                if not alpha[rows, k].any():
                    continue
                saved = values[:, k].clone()
                values[:, k] = 0.0
                delta = losses() - base
                values[:, k] = saved
                touched = np.unique(block)
                total[touched, k] = np.bincount(block, weights=delta, minlength=nb)[touched]
                squares[touched, k] = np.bincount(block, weights=delta ** 2, minlength=nb)[touched]
                counts[touched, k] = np.bincount(block, minlength=nb)[touched]
        out[f.name] = _lower_bound(total, squares, counts, z)
    return out


def per_byte(scores: dict[str, np.ndarray], starts: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Scores divided by the rows of their block: value per stored value (each costs the same bytes)."""
    return {n: s / np.maximum(np.diff(starts[n]), 1)[:, None] for n, s in scores.items()}


def ranking(lower: dict[str, np.ndarray], starts: dict[str, list[int]], fill: dict[str, np.ndarray] | None = None,
            scaled: bool = False) -> dict[str, np.ndarray]:
    """What pruning ranks pairs by: the lower bound per byte where it is positive. A pair whose bound is 0 has
    nothing showing it matters: without `fill` it scores -inf (kept only as a block's floor, that budget left
    unspent); with `fill` (values in [0, 1]) it ranks below every pair with evidence, in that order, or, with
    `scaled`, the fill is put in the evidence's units (`prior_scale`) and every pair scores the larger of its
    evidence and that prior, so a little evidence on a large rare block no longer outranks the prior of a
    frequent one. Either way equal scores are never broken by field order (which had made kept widths follow
    field order)."""
    values = per_byte(lower, starts)
    scale = prior_scale(values, fill) if fill is not None and scaled else None
    out = {}
    for n, s in values.items():
        if fill is None:
            out[n] = np.where(s > 0, s, -np.inf)
        elif scale is None:
            out[n] = np.where(s > 0, s, fill[n] / 2.0 - 1.0)
        else:
            prior = scale * fill[n]
            out[n] = np.where(s > 0, np.maximum(s, prior), prior)
    return out


def prior_scale(values: dict[str, np.ndarray], fill: dict[str, np.ndarray]) -> float | None:
    """The factor that puts `fill` (the frequency prior, [0, 1]) in the units of `values` (loss increase per
    stored value): the median ratio of the two over the pairs that have both, None where no pair has."""
    both = {n: (values[n] > 0) & np.isfinite(fill[n]) & (fill[n] > 0) for n in values}
    ratios = np.concatenate([values[n][both[n]] / fill[n][both[n]] for n in values])
    return float(np.median(ratios)) if len(ratios) else None


def frequency_fill(starts: dict[str, list[int]], counts: dict[str, np.ndarray], magnitude: dict[str, np.ndarray],
                   lower: dict[str, np.ndarray] | None = None, temperature: float = 0.3) -> dict[str, np.ndarray]:
    """Per field, [blocks, width] in [0, 1]: the frequency prior of each pair, which `ranking` spends after the
    evidence or, scaled, beside it.

    MDE's prior (Ginart et al.): a block of mean training frequency p deserves about p**temperature
    dimensions. The r-th dimension of a block (counting its evidence-backed dimensions first, then the
    rest by E|e * alpha|) scores p**temperature / r, so spending the budget greedily down this score gives
    every block a width proportional to p**temperature, MDE's power law, instead of handing whole
    blocks out in frequency order. A pair alpha has pruned (magnitude 0) scores -inf."""
    out = {}
    for n, mag in magnitude.items():
        pop = np.array([counts[n][a:b].mean() for a, b in zip(starts[n][:-1], starts[n][1:])], dtype=np.float64)
        evidence = (lower[n] > 0) if lower is not None else np.zeros(mag.shape, dtype=bool)
        position = np.empty(mag.shape, dtype=np.float64)
        for b in range(mag.shape[0]):
            order = np.lexsort((-mag[b], ~evidence[b]))  # evidence first, then by magnitude
            position[b, order] = np.arange(1, mag.shape[1] + 1)
        out[n] = np.where(mag > 0, pop[:, None] ** temperature / position, -np.inf)
    top = max((float(v[np.isfinite(v)].max()) for v in out.values() if np.isfinite(v).any()), default=0.0) or 1.0
    return {n: v / top for n, v in out.items()}
