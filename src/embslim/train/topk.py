"""Top-k rows for pointwise backbones: sampled negatives for training, every (user, item) pair for scoring."""
from __future__ import annotations

import numpy as np

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
    return with_negatives(data.split("train"), data.items, negatives, rng)


def with_negatives(pos: FeatureTable, items: FeatureTable, negatives: int, rng: np.random.Generator) -> FeatureTable:
    """`pos` (label 1) followed by `negatives` copies of it whose items are drawn uniformly (label 0)."""
    n_items = len(items.label)
    parts = [pos]
    for _ in range(negatives):
        neg = with_items(pos, items, rng.integers(1, n_items, size=len(pos)))
        neg.label = np.zeros(len(pos), dtype=np.float32)
        parts.append(neg)
    width = {name: max(p.bags[name].shape[1] for p in parts) for name in pos.bags}
    return FeatureTable(
        pos.fields,
        np.concatenate([p.ids for p in parts]),
        {k: np.concatenate([_fit_width(p.bags[k], width[k]) for p in parts]) for k in pos.bags},
        np.concatenate([p.label for p in parts]),
    )


def candidate_rows(held_out: FeatureTable, items: FeatureTable) -> FeatureTable:
    """Every (user row, catalogue item) pair: len(held_out) * n_items rows, user-major."""
    n_items = len(items.label)
    rows = held_out.take(np.repeat(np.arange(len(held_out)), n_items))
    return with_items(rows, items, np.tile(np.arange(n_items), len(held_out)))
