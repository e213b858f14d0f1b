"""Behaviour histories: for each interaction, the items its user interacted with before it.

A row's history holds the items of the same user's rows with a strictly earlier timestamp
(rows at the same second are simultaneous, so none is in another's history), the latest `n`
of them, oldest first, ordered by time and then file order. Nothing at or after the row's own
time is in it, whatever split the rows fall in: the history is what was known when the row
happened. It holds item ids only, never labels, so a random CTR split leaks no target.
"""
from __future__ import annotations

import numpy as np

from embslim.errors import ConfigError

HISTORY = "history"  # the name of the behaviour sequence in a FeatureTable


def behaviour_history(users: np.ndarray, timestamps: np.ndarray, items: np.ndarray, n: int) -> np.ndarray:
    """[rows, n] item ids (-1 padding at the end): each row's user's latest `n` strictly earlier items."""
    if n < 1:
        raise ConfigError(f"history length must be >= 1, got {n}")
    rows = len(users)
    order = np.lexsort((np.arange(rows), timestamps, users))
    u, t, it = users[order], timestamps[order], items[order]
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_time = new_user | np.r_[True, t[1:] != t[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(rows), 0))
    end = np.maximum.accumulate(np.where(new_time, np.arange(rows), 0))  # first row of this (user, second)
    begin = np.maximum(user_start, end - n)
    index = begin[:, None] + np.arange(n)[None, :]
    valid = index < end[:, None]
    history = np.where(valid, it[np.minimum(index, max(rows - 1, 0))], -1)
    out = np.empty_like(history)
    out[order] = history
    return out
