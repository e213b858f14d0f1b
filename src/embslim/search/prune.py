"""Pruning a searched embedding to a byte budget: which (block, dimension) pairs to keep.

Every (field, block, dimension) costs rows_in_block * 4 bytes (2 or 1 where the values are stored as fp16 or
int8, whose first kept dimension of a block also pays the block's per-row scales). Pairs are taken in
order of importance while they fit; smaller pairs further down fill what the large
ones leave, so the result lands just under the budget and never over it. The block
index (starts, offsets, column maps) is paid first. A fixed threshold on importance
is the alternative when no budget is given.
"""
from __future__ import annotations

import numpy as np

from embslim.embeddings.blockwise import FieldLayout, index_bytes_for, layout_bytes, row_overhead_bytes, value_bytes
from embslim.errors import BudgetError


def prune_to_budget(importance: dict[str, np.ndarray], starts: dict[str, list[int]], width: int, budget_bytes: int,
                    min_dims: int = 0, precision: str = "fp32") -> dict[str, FieldLayout]:
    """Keep the most important (block, dim) pairs whose total serving bytes, values stored at `precision`,
    fit `budget_bytes`.

    `min_dims` first gives every block its most important dimensions up to that count
    (while they fit), so no value is left without a vector. Beyond that floor, pairs scored
    -inf (nothing shows they matter) are never kept, even when the budget would allow them.
    """
    fixed = index_bytes_for([len(s) - 1 for s in starts.values()], width)
    remaining = budget_bytes - fixed
    if remaining < 0:
        raise BudgetError(f"budget of {budget_bytes} bytes is below the block index alone ({fixed} bytes)")
    names = list(importance)
    ranked = sorted(((float(importance[n][b, k]), n, b, k) for n in names for b, k in np.ndindex(importance[n].shape)),
                    key=lambda c: (-c[0], c[1], c[2], c[3]))
    floor_keys = {(n, b, int(k)) for n in names for b in range(importance[n].shape[0])
                  for k in np.argsort(-importance[n][b], kind="stable")[:min_dims]}
    order = [c for c in ranked if c[1:] in floor_keys] + [c for c in ranked if c[1:] not in floor_keys]
    kept: dict[str, list[list[int]]] = {n: [[] for _ in range(len(starts[n]) - 1)] for n in names}
    for score, n, b, k in order:
        if score == -np.inf and (n, b, k) not in floor_keys:
            continue
        rows = starts[n][b + 1] - starts[n][b]
        cost = rows * (value_bytes(precision) + (0 if kept[n][b] else row_overhead_bytes(precision)))
        if cost <= remaining:
            kept[n][b].append(k)
            remaining -= cost
    layouts = {n: FieldLayout(list(starts[n]), [sorted(c) for c in kept[n]]) for n in names}
    assert layout_bytes(layouts, width, precision) <= budget_bytes
    return layouts


def value_per_byte(importance: dict[str, np.ndarray], starts: dict[str, list[int]], counts: dict[str, np.ndarray],
                   exponent: float = 0.5) -> dict[str, np.ndarray]:
    """Importance times the block's mean training frequency per row, raised to `exponent`.

    A (block, dim) pair costs rows * 4 bytes and serves the block's occurrences. With
    exponent 1 the ranking is the greedy knapsack of total signal per byte, which
    lets frequency swamp importance; 0 ranks by importance alone. In between, frequent
    blocks keep more dimensions while important fields still win over noise.
    """
    out = {}
    for n, score in importance.items():
        s = starts[n]
        freq = np.array([counts[n][a:b].mean() for a, b in zip(s[:-1], s[1:])], dtype=np.float64)
        out[n] = score * np.power(freq, exponent)[:, None]
    return out


def prune_by_threshold(importance: dict[str, np.ndarray], starts: dict[str, list[int]], threshold: float) -> dict[str, FieldLayout]:
    """Keep every (block, dim) pair whose importance is at least `threshold`."""
    return {n: FieldLayout(list(starts[n]), [np.flatnonzero(row >= threshold).tolist() for row in score]) for n, score in importance.items()}
