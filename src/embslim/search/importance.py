"""How much each (field, block, dimension) of a searched DNIS model is worth: the validation
loss it costs to drop it.

After the alpha search, the gate alpha[block, k] of each field is set to 0 one dimension
at a time and the validation loss is measured again. For a single-valued field, zeroing
dimension k in every block at once costs one pass, and each row's loss change is charged to
the block its value falls in (a row only sees its own block); a multi-valued field costs
one pass per block. The score of a pair is a lower confidence bound on its summed loss
increase, `max(0, sum(delta) - z * sqrt(n * var(delta)))`: pairs whose measured value is
within noise of zero (rare blocks, fields the model does not need) score 0 instead of
winning by chance, which magnitude scores such as E|e * alpha| cannot tell apart.
Divided by the pair's bytes, it ranks what to keep under a budget.
"""
from __future__ import annotations

import numpy as np
import torch

from embslim.data.fields import FeatureTable, PreparedData
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.dnis import DNISEmbedding
from embslim.models.base import Recommender
from embslim.train.trainer import task_loss

EVAL_BATCH = 16384


class _PerRowLoss:
    """Per-row validation loss of `model` on a fixed set of rows, in fixed batches."""

    def __init__(self, model: Recommender, table: FeatureTable, task: str) -> None:
        self.model, self.task = model, task
        self.batches = [SparseBatch.from_table(table, np.arange(s, min(s + EVAL_BATCH, len(table))))
                        for s in range(0, len(table), EVAL_BATCH)]

    @torch.no_grad()
    def __call__(self) -> np.ndarray:
        self.model.eval()
        return torch.cat([task_loss(self.task, self.model(b), b.label, reduction="none") for b in self.batches]).double().numpy()


def _lower_bound(delta_sum: np.ndarray, delta_sq: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """max(0, sum - z * sqrt(n * var)) elementwise, from sums and sums of squares over n rows."""
    safe = np.maximum(n, 1)
    var = np.maximum(delta_sq / safe - (delta_sum / safe) ** 2, 0.0)
    return np.maximum(delta_sum - z * np.sqrt(n * var), 0.0)


@torch.no_grad()
def loss_increase(model: Recommender, data: PreparedData, z: float = 2.0, max_rows: int = 100_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per field, [blocks, width]: lower confidence bound of the validation loss increase from
    dropping each (block, dimension) of the DNIS layer; pairs alpha already pruned score 0.

    At most `max_rows` validation rows are used (a seeded sample), which bounds the cost to
    fields x width passes over that many rows.
    """
    emb: DNISEmbedding = model.embedding
    table = data.split("val")
    if len(table) > max_rows:
        table = table.take(np.sort(np.random.default_rng([seed, 7]).choice(len(table), max_rows, replace=False)))
    losses = _PerRowLoss(model, table, data.task)
    base = losses()
    alpha = emb.alpha
    starts = emb.field_block_starts()
    out: dict[str, np.ndarray] = {}
    for f, rows in zip(emb.fields, emb.block_slices()):
        nb = rows.stop - rows.start
        total, squares, counts = np.zeros((nb, emb.width)), np.zeros((nb, emb.width)), np.zeros((nb, emb.width))
        if f.multivalued:
            groups = [(slice(rows.start + b, rows.start + b + 1), np.full(len(table), b)) for b in range(nb)]
        else:
            ids = table.ids[:, table.single_index(f.name)]
            groups = [(rows, np.searchsorted(np.asarray(starts[f.name]), ids, side="right") - 1)]
        for gate, block in groups:
            for k in range(emb.width):
                saved = alpha[gate, k].clone()
                if not saved.any():
                    continue
                alpha[gate, k] = 0.0
                delta = losses() - base
                alpha[gate, k] = saved
                touched = np.unique(block)
                total[touched, k] = np.bincount(block, weights=delta, minlength=nb)[touched]
                squares[touched, k] = np.bincount(block, weights=delta ** 2, minlength=nb)[touched]
                counts[touched, k] = np.bincount(block, minlength=nb)[touched]
        out[f.name] = _lower_bound(total, squares, counts, z)
    return out


def per_byte(scores: dict[str, np.ndarray], starts: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Scores divided by the rows of their block: value per stored value (each costs the same bytes)."""
    return {n: s / np.maximum(np.diff(starts[n]), 1)[:, None] for n, s in scores.items()}
