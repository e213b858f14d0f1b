"""Implicit-feedback CTR: every interaction is a click, and sampled items the user never interacted with are
the non-clicks (the protocol of DIN's Amazon experiments, Zhou et al. KDD 2018).

Each click row gets `per_click` non-click rows: the same user, context and timestamp, an item drawn uniformly
from the items in the data among those its user never interacted with, and that item's own item-side fields
(its genres). A non-click row follows its click into the same split and has the same behaviour history, so
a model never sees a non-click's item as a behaviour.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from embslim.errors import ConfigError, DataError

if TYPE_CHECKING:
    from embslim.data.encode import RawColumns

MAX_DRAWS = 100  # rounds of redrawing items a user already interacted with


def with_sampled_non_clicks(raw: "RawColumns", per_click: int, seed: int) -> tuple["RawColumns", np.ndarray]:
    """The click rows (target 1) followed by `per_click` non-click rows each (target 0), and for every row the
    click row it belongs to (a click: itself)."""
    if per_click < 1:
        raise ConfigError(f"--ctr-negatives must be at least 1, got {per_click}")
    if raw.user_field is None or raw.item_field is None:
        raise ConfigError(f"--ctr-negatives needs user and item fields; dataset {raw.name!r} lacks them")
    n = len(raw.target)
    users = np.unique(raw.columns[raw.user_field], return_inverse=True)[1]
    catalogue, first_row, items = np.unique(raw.columns[raw.item_field], return_index=True, return_inverse=True)
    interacted = np.unique(users.astype(np.int64) * len(catalogue) + items)
    rng = np.random.default_rng([seed, 7])
    owner = np.repeat(np.arange(n), per_click)
    drawn = rng.integers(0, len(catalogue), size=len(owner))
    for _ in range(MAX_DRAWS):
        taken = np.isin(users[owner].astype(np.int64) * len(catalogue) + drawn, interacted)
        if not taken.any():
            break
        drawn[taken] = rng.integers(0, len(catalogue), size=int(taken.sum()))
    else:
        raise DataError(f"--ctr-negatives: some user of {raw.name!r} interacted with (nearly) every item; no non-click to sample")
    source = np.r_[np.arange(n), owner]
    item_rows = np.r_[np.arange(n), first_row[drawn]]  # where each row's item-side fields come from
    columns = {name: np.asarray(raw.columns[name])[item_rows if raw.sides.get(name) == "item" else source] for name in raw.columns}
    bags = {name: take_bags(values, lengths, item_rows if raw.sides.get(name) == "item" else source)
            for name, (values, lengths) in raw.bags.items()}
    target = np.r_[np.ones(n, dtype=np.float32), np.zeros(len(owner), dtype=np.float32)]
    timestamp = None if raw.timestamp is None else raw.timestamp[source]
    info = {**raw.info, "ctr_negatives": {"per_click": per_click, "clicks": n, "non_clicks": len(owner)}}
    return replace(raw, columns=columns, bags=bags, target=target, timestamp=timestamp, info=info), source


def take_bags(values: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bags of `rows` (repeats allowed) as (flat values, lengths)."""
    starts = np.cumsum(lengths) - lengths
    new_lengths = lengths[rows]
    offsets = np.arange(int(new_lengths.sum())) - np.repeat(np.cumsum(new_lengths) - new_lengths, new_lengths)
    return values[np.repeat(starts[rows], new_lengths) + offsets], new_lengths
