"""Frequency blocks: contiguous id ranges of a field (ids are ranked by training frequency).

Block 0 holds the most frequent values (and the OOV id 0). Blocks are cut so each
holds about the same share of training occurrences, or at given fractions of rows.
"""
from __future__ import annotations

import numpy as np

from embslim.data.fields import FieldSpec
from embslim.errors import ConfigError


def block_starts(field: FieldSpec, blocks: int | list[float] = 6) -> np.ndarray:
    """Start id of every block plus the end (cardinality): S+1 increasing integers.

    `blocks` = S cuts by equal shares of training occurrences; a list of increasing
    fractions in (0, 1] cuts at those fractions of the rows.
    """
    n = field.cardinality
    if isinstance(blocks, int):
        if blocks < 1:
            raise ConfigError(f"field {field.name!r}: need at least one block, got {blocks}")
        mass = np.cumsum(field.counts.astype(np.float64) + 1e-9)
        cuts = np.searchsorted(mass, mass[-1] * np.arange(1, blocks) / blocks, side="right")
    else:
        fractions = np.asarray(blocks, dtype=np.float64)
        if not (np.all(np.diff(fractions) > 0) and 0 < fractions[0] and fractions[-1] <= 1):
            raise ConfigError(f"block fractions must increase within (0, 1], got {blocks}")
        cuts = np.ceil(fractions[:-1] * n).astype(np.int64) if fractions[-1] == 1 else np.ceil(fractions * n).astype(np.int64)
    starts = np.unique(np.clip(np.r_[0, cuts, n], 0, n))
    starts = starts[(starts < n) | (np.arange(len(starts)) == len(starts) - 1)]
    return starts.astype(np.int64)


def block_of(ids: "np.ndarray", starts: np.ndarray) -> np.ndarray:
    return np.searchsorted(starts, ids, side="right") - 1
