"""Per-field vocabularies fitted on the training split, ranked by frequency.

Id 0 is the out-of-vocabulary bucket: values seen fewer than `min_count` times in
training, and values never seen there, map to it. Ids 1.. follow descending
training frequency (ties by value), so frequency blocks are contiguous id ranges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class Vocab:
    values: np.ndarray
    counts: np.ndarray
    seen_values: int

    @property
    def cardinality(self) -> int:
        return len(self.values) + 1

    def encode(self, column: np.ndarray) -> np.ndarray:
        """Map raw values to ids (unseen or rare values -> 0)."""
        if len(column) == 0:
            return np.zeros(0, dtype=np.int64)
        uniq, inverse = np.unique(column, return_inverse=True)
        lookup = {v: i + 1 for i, v in enumerate(self.values.tolist())}
        mapped = np.fromiter((lookup.get(u, 0) for u in uniq.tolist()), dtype=np.int64, count=len(uniq))
        return mapped[inverse.reshape(-1)]


def fit_vocab(train_values: np.ndarray, min_count: int = 1, catalogue: np.ndarray | None = None) -> Vocab:
    """Fit a vocabulary on training values; `catalogue` adds known values absent from training.

    counts[0] is the number of training occurrences that fall into the OOV bucket.
    """
    uniq, cnt = np.unique(train_values, return_counts=True)
    keep = cnt >= max(min_count, 1)
    order = np.argsort(-cnt[keep], kind="stable")
    values = uniq[keep][order]
    counts = cnt[keep][order]
    if catalogue is not None:
        extra = np.setdiff1d(np.unique(catalogue), values)
        values = np.concatenate([values, extra])
        counts = np.concatenate([counts, np.zeros(len(extra), dtype=counts.dtype)])
    oov = int(cnt[~keep].sum())
    return Vocab(values=values, counts=np.concatenate([[oov], counts]).astype(np.int64), seen_values=len(uniq))


@dataclass(eq=False)
class CodedVocab(Vocab):
    """A vocabulary over dictionary codes 0..size-1; `values` are the kept codes, by rank."""

    size: int = 0

    def encode(self, column: np.ndarray) -> np.ndarray:
        """Map codes to ids (rare or unseen codes -> 0) through a dense lookup table."""
        lookup = np.zeros(self.size, dtype=np.int64)
        lookup[self.values] = np.arange(1, len(self.values) + 1)
        return lookup[column]


def fit_coded_vocab(train_codes: np.ndarray, size: int, min_count: int = 1) -> CodedVocab:
    """`fit_vocab` for codes into a sorted dictionary of `size` values: the same ranks (ties by
    code, which is value order) and counts, by counting instead of sorting."""
    cnt = np.bincount(train_codes, minlength=size)
    keep = cnt >= max(min_count, 1)
    kept = np.flatnonzero(keep)
    values = kept[np.argsort(-cnt[kept], kind="stable")]
    oov = int(cnt[~keep].sum())
    counts = np.concatenate([[oov], cnt[values]]).astype(np.int64)
    return CodedVocab(values=values, counts=counts, seen_values=int((cnt > 0).sum()), size=size)


def flatten_bags(bags: list[list]) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a list of value lists into (values, lengths)."""
    lengths = np.fromiter((len(b) for b in bags), dtype=np.int64, count=len(bags))
    values = np.array([v for b in bags for v in b], dtype=object if not lengths.sum() else None)
    return values, lengths


def pad_bags(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Turn flat ids with per-row lengths into a [rows, max_len] matrix padded with -1."""
    width = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(lengths), max(width, 1)), -1, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    cols = np.arange(len(ids)) - np.repeat(starts, lengths)
    out[rows, cols] = ids
    return out
