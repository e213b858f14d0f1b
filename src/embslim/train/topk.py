"""Top-k recommendation: negative sampling for training and full-ranking evaluation.

Evaluation ranks each user's held-out item against every item in the catalogue,
excluding items the user already has in training (and, for test, the validation
item), as in the leave-last-out protocol.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from embslim.data.fields import FeatureTable, PreparedData


def with_items(rows: FeatureTable, items: FeatureTable, item_ids: np.ndarray) -> FeatureTable:
    """Copy of `rows` whose item-side features are those of `item_ids` (one per row)."""
    out = FeatureTable(rows.fields, rows.ids.copy(), dict(rows.bags), rows.label.copy())
    for f in rows.fields:
        if f.side != "item":
            continue
        if f.multivalued:
            out.bags[f.name] = _fit_width(items.bags[f.name][item_ids], rows.bags[f.name].shape[1])
        else:
            col = rows.single_index(f.name)
            out.ids[:, col] = items.ids[item_ids, items.single_index(f.name)]
    return out


def _fit_width(padded: np.ndarray, width: int) -> np.ndarray:
    if padded.shape[1] >= width:
        return padded
    return np.pad(padded, ((0, 0), (0, width - padded.shape[1])), constant_values=-1)


def training_rows(data: PreparedData, negatives: int, rng: np.random.Generator) -> FeatureTable:
    """Training positives plus `negatives` uniformly sampled items per positive (label 0)."""
    pos = data.split("train")
    n_items = len(data.items.label)
    parts = [pos]
    for _ in range(negatives):
        neg = with_items(pos, data.items, rng.integers(1, n_items, size=len(pos)))
        neg.label = np.zeros(len(pos), dtype=np.float32)
        parts.append(neg)
    width = {name: max(p.bags[name].shape[1] for p in parts) for name in pos.bags}
    return FeatureTable(
        pos.fields,
        np.concatenate([p.ids for p in parts]),
        {k: np.concatenate([_fit_width(p.bags[k], width[k]) for p in parts]) for k in pos.bags},
        np.concatenate([p.label for p in parts]),
    )


def seen_matrix(data: PreparedData, splits: tuple[str, ...]) -> sp.csr_matrix:
    """Users x items matrix of interactions in the given splits."""
    ucol = data.table.single_index(data.user_field)
    icol = data.table.single_index(data.item_field)
    rows = np.concatenate([data.splits[s] for s in splits])
    users, items = data.table.ids[rows, ucol], data.table.ids[rows, icol]
    shape = (int(data.table.ids[:, ucol].max()) + 1, len(data.items.label))
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (users, items)), shape=shape)


def candidate_rows(held_out: FeatureTable, items: FeatureTable) -> FeatureTable:
    """Every (user row, catalogue item) pair: len(held_out) * n_items rows, user-major."""
    n_items = len(items.label)
    rows = held_out.take(np.repeat(np.arange(len(held_out)), n_items))
    return with_items(rows, items, np.tile(np.arange(n_items), len(held_out)))


def held_out_ranks(scores: np.ndarray, targets: np.ndarray, excluded: sp.csr_matrix) -> np.ndarray:
    """0-based rank of each target among its row of scores, excluded items and item 0 removed."""
    scores = scores.astype(np.float64, copy=True)
    target_scores = scores[np.arange(len(targets)), targets]
    mask = excluded.toarray().astype(bool)
    mask[:, 0] = True
    mask[np.arange(len(targets)), targets] = False
    scores[mask] = -np.inf
    return (scores > target_scores[:, None]).sum(axis=1)
