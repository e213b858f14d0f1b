"""Typed descriptions of feature fields and the encoded tables that hold them.

Every field is encoded to integer ids ranked by descending training frequency:
id 0 is the out-of-vocabulary (OOV) bucket, id 1 the most frequent value, and so on.
That ordering is what frequency-aware methods (DNIS blocks, MDE) rely on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Side = Literal["user", "item", "context"]
Pooling = Literal["sum", "mean"]


@dataclass(eq=False)
class FieldSpec:
    """One sparse feature field.

    cardinality counts every row of its table, the OOV bucket (id 0) included.
    counts[i] is how often id i occurs in the training split (multi-valued: per value).
    """

    name: str
    cardinality: int
    counts: np.ndarray
    multivalued: bool = False
    pooling: Pooling = "sum"
    side: Side = "context"

    def __post_init__(self) -> None:
        if self.cardinality < 1:
            raise ValueError(f"field {self.name!r}: cardinality must be >= 1")
        if len(self.counts) != self.cardinality:
            raise ValueError(f"field {self.name!r}: counts has {len(self.counts)} entries, cardinality is {self.cardinality}")


@dataclass(eq=False)
class FeatureTable:
    """Encoded rows: one id column per single-valued field, a padded id matrix per multi-valued one.

    ids[:, j] belongs to the j-th single-valued field in `fields` order; bags[name] is
    [rows, max_len] with -1 as padding.

    `sequences[name]` is a [rows, max_len] id matrix (-1 padding, oldest first) that is not a
    field of its own: its ids index the table of the single-valued field `sequence_fields[name]`
    (a behaviour history reads the item table), so it adds no table and no bytes.
    """

    fields: list[FieldSpec]
    ids: np.ndarray
    bags: dict[str, np.ndarray]
    label: np.ndarray
    sequences: dict[str, np.ndarray] = field(default_factory=dict)
    sequence_fields: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    @property
    def single_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if not f.multivalued]

    def single_index(self, name: str) -> int:
        """Column of a single-valued field in `ids`."""
        names = [f.name for f in self.single_fields]
        if name not in names:
            raise KeyError(f"no single-valued field {name!r}; fields are {names}")
        return names.index(name)

    def select(self, names: list[str]) -> "FeatureTable":
        """Only the named fields, in the given order."""
        by_name = {f.name: f for f in self.fields}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise KeyError(f"no fields {missing}; fields are {list(by_name)}")
        chosen = [by_name[n] for n in names]
        cols = [self.single_index(f.name) for f in chosen if not f.multivalued]
        bags = {f.name: self.bags[f.name] for f in chosen if f.multivalued}
        kept = {s: f for s, f in self.sequence_fields.items() if f in names}
        return FeatureTable(chosen, self.ids[:, cols], bags, self.label, {s: self.sequences[s] for s in kept}, kept)

    def take(self, rows: np.ndarray) -> "FeatureTable":
        """The rows at the given indices, sharing field specs."""
        return FeatureTable(self.fields, self.ids[rows], {k: v[rows] for k, v in self.bags.items()}, self.label[rows],
                            {k: v[rows] for k, v in self.sequences.items()}, self.sequence_fields)


@dataclass(eq=False)
class PreparedData:
    """A dataset ready for training: encoded table, split row indices and what reading it found.

    For top-k tasks `user_field`/`item_field` name the key fields and `items` holds one
    row per item id (its item-side features) so every item can be scored for a user.
    `order[row]` is the row's rank in time (timestamp, then file order), so sequence models can
    rebuild each user's history; `user_ids` keeps the per-row user id when `select_fields`
    drops the user field (a sequence model embeds items only but still ranks per user).
    `times[row]` is the row's timestamp where the source has real times (MovieLens: seconds; not
    the SASRec files, whose only clock is the line number), for HSTU's time bias.
    """

    name: str
    task: str
    table: FeatureTable
    splits: dict[str, np.ndarray]
    user_field: str | None = None
    item_field: str | None = None
    items: FeatureTable | None = None
    info: dict = field(default_factory=dict)
    order: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    times: np.ndarray | None = None

    def select_fields(self, names: list[str]) -> "PreparedData":
        """The same data restricted to the named fields (the item key must be kept for top-k; the user
        key's column survives in `user_ids` when it is dropped)."""
        items = self.items.select([n for n in names if n in {f.name for f in self.items.fields}]) if self.items is not None else None
        dropped = self.user_field not in names and self.user_field in {f.name for f in self.table.fields}
        users = self.row_users() if dropped else self.user_ids
        return PreparedData(self.name, self.task, self.table.select(names), self.splits, self.user_field, self.item_field, items, self.info,
                            self.order, users, self.times)

    def row_users(self) -> np.ndarray:
        """The user id of every row, whether or not the user field is among the table's fields."""
        if self.user_ids is not None:
            return self.user_ids
        if self.user_field is None:
            raise KeyError(f"dataset {self.name!r} has no user field")
        return self.table.ids[:, self.table.single_index(self.user_field)]

    def row_items(self) -> np.ndarray:
        """The item id of every row."""
        if self.item_field is None:
            raise KeyError(f"dataset {self.name!r} has no item field")
        return self.table.ids[:, self.table.single_index(self.item_field)]

    def split(self, name: str) -> FeatureTable:
        return self.table.take(self.splits[name])
