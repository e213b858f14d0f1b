"""From raw columns to an encoded, split `PreparedData`.

Loaders produce `RawColumns` (strings or integers as read); this module splits the
rows, fits each field's vocabulary on the training split and encodes every split
with it, so validation and test never leak into vocabularies or frequency counts.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from embslim.data.fields import FeatureTable, FieldSpec, PreparedData, Side
from embslim.data.history import HISTORY, behaviour_history
from embslim.data.negatives import with_sampled_non_clicks
from embslim.data.splits import leave_last_out, random_split, time_split, user_split
from embslim.data.vocab import fit_coded_vocab, fit_vocab, pad_bags
from embslim.errors import ConfigError

TASKS = ("ctr", "rating", "topk")


@dataclass(eq=False)
class RawColumns:
    """Columns as read from a source, before encoding.

    `bags` holds multi-valued fields as (flat values, per-row lengths).
    `target` is the raw target (rating, click); tasks turn it into a label.
    `columns` may be `CodedColumns` (what the pyarrow readers return): the same values, kept
    as codes that `prepare` encodes without sorting strings.
    """

    name: str
    columns: Mapping[str, np.ndarray]
    target: np.ndarray
    bags: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    sides: dict[str, Side] = field(default_factory=dict)
    timestamp: np.ndarray | None = None
    user_field: str | None = None
    item_field: str | None = None
    tasks: tuple[str, ...] = ("ctr",)
    info: dict = field(default_factory=dict)
    timestamp_is_time: bool = True  # False where `timestamp` only orders the rows (a line number)


class CodedColumns(Mapping):
    """Columns as integer codes into each field's sorted distinct values; indexing decodes them.

    Code order is value order, so a vocabulary fitted on the codes ranks (ties by value) and
    encodes exactly as one fitted on the values themselves.
    """

    def __init__(self, codes: dict[str, np.ndarray], dictionaries: dict[str, np.ndarray]) -> None:
        self.codes = codes
        self.dictionaries = dictionaries

    def __getitem__(self, name: str) -> np.ndarray:
        return self.dictionaries[name][self.codes[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.codes)

    def __len__(self) -> int:
        return len(self.codes)


@dataclass(frozen=True)
class PrepareConfig:
    """How to turn raw columns into training data; part of the cache key."""

    task: str = "ctr"
    min_count: int = 1
    split_seed: int = 0
    split: str = "random"  # ctr/rating: "random" (seeded shuffle), "time" (oldest rows train, newest test) or "user" (whole users, seeded)
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    click_threshold: float = 4.0
    history: int = 0  # > 0: each row gets its user's last `history` earlier items (a sequence read through the item table)
    negatives: int = 0  # ctr, > 0: every interaction is a click with this many sampled non-clicks (see `data.negatives`)


def prepare(raw: RawColumns, config: PrepareConfig) -> PreparedData:
    """Split, fit vocabularies on the training split, encode and label by task."""
    if config.task not in raw.tasks:
        raise ConfigError(f"dataset {raw.name!r} supports tasks {list(raw.tasks)}, not {config.task!r}")
    if config.history:
        _check_history(raw, config)
    clicks = len(raw.target)
    source = None  # with sampled non-clicks: each row's click row
    if config.negatives:
        if config.task != "ctr":
            raise ConfigError(f"--ctr-negatives makes ctr rows; it does not apply to task {config.task!r}")
        raw, source = with_sampled_non_clicks(raw, config.negatives, config.split_seed)
    n = len(raw.target)
    splits = _split(raw, config, clicks)
    if source is not None:  # a non-click follows its click into that click's split
        split_of = np.empty(clicks, dtype=np.int64)
        for k, name in enumerate(splits):
            split_of[splits[name]] = k
        splits = {name: np.flatnonzero(split_of[source] == k) for k, name in enumerate(splits)}
    train = splits["train"]

    fields: list[FieldSpec] = []
    stats: dict[str, dict] = {}
    id_columns: list[np.ndarray] = []
    bags: dict[str, np.ndarray] = {}
    coded = raw.columns if isinstance(raw.columns, CodedColumns) else None
    for name in raw.columns:
        catalogue = raw.columns[name] if (config.task == "topk" and name in (raw.item_field, raw.user_field)) else None
        min_count = 1 if catalogue is not None else config.min_count
        if coded is not None and catalogue is None:
            column = coded.codes[name]
            vocab = fit_coded_vocab(column[train], len(coded.dictionaries[name]), min_count)
        else:
            column = raw.columns[name]
            vocab = fit_vocab(column[train], min_count, catalogue)
        id_columns.append(vocab.encode(column))
        stats[name] = _vocab_stats(vocab)
        fields.append(FieldSpec(name, vocab.cardinality, vocab.counts, side=raw.sides.get(name, "context")))
    for name, (values, lengths) in raw.bags.items():
        row_of_value = np.repeat(np.arange(n), lengths)
        in_train = np.isin(row_of_value, train)
        vocab = fit_vocab(values[in_train], config.min_count)
        bags[name] = pad_bags(vocab.encode(values), lengths)
        stats[name] = _vocab_stats(vocab)
        fields.append(FieldSpec(name, vocab.cardinality, vocab.counts, multivalued=True, pooling="mean", side=raw.sides.get(name, "context")))

    label = _label(raw.target, config)
    ids = stack_columns(id_columns, n)
    table = FeatureTable(fields, ids, bags, label)
    data = PreparedData(raw.name, config.task, table, splits, raw.user_field, raw.item_field, info=dict(raw.info))
    if config.history:
        items = id_columns[list(raw.columns).index(raw.item_field)]
        behaviours = slice(0, clicks)  # non-clicks are no behaviour: each reads its click's history
        history = behaviour_history(np.asarray(raw.columns[raw.user_field])[behaviours], raw.timestamp[behaviours], items[behaviours], config.history)
        history = history if source is None else history[source]
        table.sequences[HISTORY], table.sequence_fields[HISTORY] = history, raw.item_field
        lengths = (history >= 0).sum(axis=1)
        data.info[HISTORY] = {"reads_table_of": raw.item_field, "max_length": config.history,
                              "mean_length": float(lengths.mean()), "empty_share": float((lengths == 0).mean())}
    if config.task == "topk":
        data.items = item_table(table, raw.item_field)
        data.order = time_order(raw.timestamp)
        data.times = raw.timestamp.astype(np.int64) if raw.timestamp_is_time else None
    data.info["fields"] = stats
    data.info["min_count"] = config.min_count
    data.info["rows"] = {k: int(len(v)) for k, v in splits.items()}
    return data


def _split(raw: RawColumns, config: PrepareConfig, rows: int) -> dict[str, np.ndarray]:
    """Train/validation/test of the first `rows` rows (the interactions) by the task's and the config's rule."""
    timestamp = None if raw.timestamp is None else raw.timestamp[:rows]
    if config.task == "topk":
        if timestamp is None or raw.user_field is None:
            raise ConfigError(f"dataset {raw.name!r} has no user/time order for a top-k split")
        return leave_last_out(np.asarray(raw.columns[raw.user_field])[:rows], timestamp)
    if config.split == "time":
        if timestamp is None:
            raise ConfigError(f"--split time needs timestamps; dataset {raw.name!r} has none")
        return time_split(timestamp, config.ratios)
    if config.split == "random":
        return random_split(rows, config.ratios, config.split_seed)
    if config.split == "user":
        if raw.user_field is None:
            raise ConfigError(f"--split user needs a user column; dataset {raw.name!r} has none")
        return user_split(np.asarray(raw.columns[raw.user_field])[:rows], config.ratios, config.split_seed)
    raise ConfigError(f"--split must be 'random', 'time' or 'user', not {config.split!r}")


def stack_columns(columns: list[np.ndarray], n: int, rows_per_block: int = 8192) -> np.ndarray:
    """`np.stack(columns, axis=1)`, a block of rows at a time: the column-to-row transpose stays
    in cache, several times faster on millions of rows."""
    if not columns:
        return np.zeros((n, 0), dtype=np.int64)
    out = np.empty((n, len(columns)), dtype=np.result_type(*columns))
    for start in range(0, n, rows_per_block):
        out[start:start + rows_per_block] = np.stack([c[start:start + rows_per_block] for c in columns], axis=1)
    return out


def _check_history(raw: RawColumns, config: PrepareConfig) -> None:
    if config.task == "topk":
        raise ConfigError("--history is for ctr and rating rows; top-k sequence models read each user's history themselves")
    if raw.timestamp is None or raw.user_field is None or raw.item_field is None:
        raise ConfigError(f"--history needs users, items and timestamps; dataset {raw.name!r} lacks them")


def _vocab_stats(vocab) -> dict:
    """Distinct training values before the min-count threshold, and the table size after it."""
    total = int(vocab.counts.sum())
    return {"distinct_in_train": int(vocab.seen_values), "cardinality": int(vocab.cardinality),
            "oov_share_of_train": float(vocab.counts[0] / total) if total else 0.0}


def _label(target: np.ndarray, config: PrepareConfig) -> np.ndarray:
    if config.task == "ctr":
        return (target >= config.click_threshold).astype(np.float32) if target.max() > 1 else target.astype(np.float32)
    if config.task == "rating":
        return target.astype(np.float32)
    return np.ones(len(target), dtype=np.float32)


def time_order(timestamps: np.ndarray) -> np.ndarray:
    """Each row's rank in time: by timestamp, ties in file order (as `leave_last_out` orders them)."""
    order = np.empty(len(timestamps), dtype=np.int64)
    order[np.lexsort((np.arange(len(timestamps)), timestamps))] = np.arange(len(timestamps))
    return order


def item_table(table: FeatureTable, item_field: str | None) -> FeatureTable:
    """One row per item id with that item's item-side features (id 0 row included)."""
    if item_field is None:
        raise ConfigError("top-k needs an item field")
    col = table.single_index(item_field)
    item_ids = table.ids[:, col]
    n_items = next(f.cardinality for f in table.fields if f.name == item_field)
    first = np.zeros(n_items, dtype=np.int64)
    uniq, index = np.unique(item_ids, return_index=True)
    first[uniq] = index
    rows = table.take(first)
    rows.ids[:, col] = np.arange(n_items)
    return rows
