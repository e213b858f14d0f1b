"""Each user's items in time order, from the rows of chosen splits (what sequence models read).

A history is built only from the splits it is asked for, so the input of a validation query
(train rows) never holds the validation or test item, and that of a test query (train and
validation rows) never holds the test item.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embslim.data.fields import PreparedData
from embslim.errors import DataError


@dataclass(frozen=True)
class Histories:
    """Items of user u in time order: items[indptr[u]:indptr[u + 1]]; `times` their timestamps where the data has them."""

    indptr: np.ndarray
    items: np.ndarray
    times: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def of(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user]:self.indptr[user + 1]]

    def last(self, users: np.ndarray, maxlen: int, drop_last: int = 0) -> np.ndarray:
        """[len(users), maxlen] the last `maxlen` items of each user's history (without its last
        `drop_last`), left-padded with -1 so the latest item is always in the last column."""
        return self.last_of(self.items, users, maxlen, drop_last)

    def last_times(self, users: np.ndarray, maxlen: int, drop_last: int = 0) -> np.ndarray:
        """The timestamps of `last(users, maxlen, drop_last)`, laid out alike (-1 in padding)."""
        if self.times is None:
            raise DataError("these histories have no timestamps")
        return self.last_of(self.times, users, maxlen, drop_last)

    def last_of(self, values: np.ndarray, users: np.ndarray, maxlen: int, drop_last: int) -> np.ndarray:
        out = np.full((len(users), maxlen), -1, dtype=np.int64)
        ends = self.indptr[users + 1] - drop_last
        starts = np.maximum(self.indptr[users], ends - maxlen)
        width = np.maximum(ends - starts, 0)
        rows = np.repeat(np.arange(len(users)), width)
        offsets = np.arange(int(width.sum())) - np.repeat(np.cumsum(width) - width, width)
        out[rows, maxlen - np.repeat(width, width) + offsets] = values[np.repeat(starts, width) + offsets]
        return out


def histories(data: PreparedData, splits: tuple[str, ...]) -> Histories:
    """Every user's items from the rows of `splits`, ordered by `data.order` (time, then file order)."""
    if data.order is None:
        raise DataError(f"dataset {data.name!r} has no time order; sequence models need a top-k dataset with timestamps or line order")
    users, items = data.row_users(), data.row_items()
    rows = np.concatenate([data.splits[s] for s in splits])
    rows = rows[np.lexsort((data.order[rows], users[rows]))]
    n_users = int(users.max()) + 1
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(users[rows], minlength=n_users))
    times = data.times[rows].astype(np.int64) if data.times is not None else None
    return Histories(indptr, items[rows].astype(np.int64), times)
