"""Pruning a searched embedding to a byte budget: which (block, dimension) pairs to keep.

Every (field, block, dimension) costs rows_in_block * 4 bytes. Pairs are taken in
order of importance while they fit; smaller pairs further down fill what the large
ones leave, so the result lands just under the budget and never over it. The block
index (starts, offsets, column maps) is paid first. A fixed threshold on importance
is the alternative when no budget is given.
"""
from __future__ import annotations

import numpy as np

from embslim.embeddings.blockwise import VALUE_BYTES, FieldLayout, index_bytes_for, layout_bytes
from embslim.errors import ConfigError


def prune_to_budget(importance: dict[str, np.ndarray], starts: dict[str, list[int]], width: int, budget_bytes: int) -> dict[str, FieldLayout]:
    """Keep the most important (block, dim) pairs whose total serving bytes fit `budget_bytes`."""
    fixed = index_bytes_for([len(s) - 1 for s in starts.values()], width)
    remaining = budget_bytes - fixed
    if remaining < 0:
        raise ConfigError(f"budget of {budget_bytes} bytes is below the block index alone ({fixed} bytes)")
    names = list(importance)
    cand = [(float(importance[n][s, k]), n, s, k) for n in names for s, k in np.ndindex(importance[n].shape)]
    cand.sort(key=lambda c: (-c[0], c[1], c[2], c[3]))
    kept: dict[str, list[list[int]]] = {n: [[] for _ in range(len(starts[n]) - 1)] for n in names}
    for _, n, s, k in cand:
        cost = (starts[n][s + 1] - starts[n][s]) * VALUE_BYTES
        if cost <= remaining:
            kept[n][s].append(k)
            remaining -= cost
    layouts = {n: FieldLayout(list(starts[n]), [sorted(c) for c in kept[n]]) for n in names}
    assert layout_bytes(layouts, width) <= budget_bytes
    return layouts


def prune_by_threshold(importance: dict[str, np.ndarray], starts: dict[str, list[int]], threshold: float) -> dict[str, FieldLayout]:
    """Keep every (block, dim) pair whose importance is at least `threshold`."""
    return {n: FieldLayout(list(starts[n]), [np.flatnonzero(row >= threshold).tolist() for row in score]) for n, score in importance.items()}
