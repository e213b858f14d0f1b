"""Avazu CTR CSV: id, click, hour (YYMMDDHH) and 21 categorical columns.

`hour` becomes two fields, hour-of-day and weekday; `id` is dropped (unique per row).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from embslim.data.arrow_reader import Block, distinct_tokens, merge_coded, read_blocks, reject_rows
from embslim.data.encode import CodedColumns, RawColumns
from embslim.data.reader import ReadReport, read_rows
from embslim.errors import DataError

CATEGORICAL = [
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
    "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]
COLUMNS = ["id", "click", "hour", *CATEGORICAL]


def _split_hour(text: str) -> tuple[str, str]:
    stamp = dt.datetime.strptime(text, "%y%m%d%H")
    return str(stamp.hour), str(stamp.weekday())


def load_avazu(path: Path, max_bad_rows: float = 0, engine: Literal["arrow", "python"] = "arrow") -> RawColumns:
    """Read an Avazu CSV file (or a folder holding train.csv / train).

    `arrow` (default) reads dictionary-coded blocks with pyarrow; `python` is the line reader
    it replaced, kept as the reference it must agree with.
    """
    file = path
    if path.is_dir():
        file = next((path / n for n in ("train.csv", "train") if (path / n).exists()), path / "train.csv")
    if engine == "arrow":
        return _load_avazu_arrow(file, max_bad_rows)
    report = ReadReport(str(file))
    labels: list[float] = []
    rows: list[list[str]] = []
    for lineno, cells in read_rows(file, COLUMNS, ",", report, header=True):
        if cells[1] not in ("0", "1"):
            report.reject(lineno, "click", f"click must be 0 or 1, found {cells[1]!r}", "bad click")
            continue
        try:
            hour, weekday = _split_hour(cells[2])
        except ValueError:
            report.reject(lineno, "hour", f"expected YYMMDDHH, found {cells[2]!r}", "bad hour")
            continue
        labels.append(float(cells[1]))
        rows.append([hour, weekday, *cells[3:]])
    report.check(max_bad_rows)
    if not rows:
        raise DataError(f"{file}: no usable rows")
    matrix = np.array(rows, dtype=str)
    names = ["hour_of_day", "weekday", *CATEGORICAL]
    columns = {name: matrix[:, j] for j, name in enumerate(names)}
    return RawColumns("avazu", columns, np.array(labels, dtype=np.float32), info={"reads": [report.as_dict()]})


OUTPUT_FIELDS = ["hour_of_day", "weekday", *CATEGORICAL]


def avazu_block(block: Block, report: ReadReport) -> tuple[np.ndarray, dict[str, tuple[pa.Array, np.ndarray]]]:
    """Labels and per-field (distinct tokens, codes) of a block's valid rows; bad rows go to `report`."""
    clicks = block.values["click"].to_pylist()
    hours = block.values["hour"].to_pylist()
    split = [_split_hour_or_none(h) for h in hours]
    kept = reject_rows(report, block, [
        (np.array([c not in ("0", "1") for c in clicks], dtype=bool), "click", "bad click",
         lambda i: f"click must be 0 or 1, found {clicks[i]!r}"),
        (np.array([s is None for s in split], dtype=bool), "hour", "bad hour", lambda i: f"expected YYMMDDHH, found {hours[i]!r}"),
    ])
    labels = np.array([float(c) if c in ("0", "1") else 0.0 for c in clicks], dtype=np.float32)[block.codes["click"][kept]]
    fields: dict[str, tuple[pa.Array, np.ndarray]] = {}
    for j, name in enumerate(("hour_of_day", "weekday")):
        uniq, index = distinct_tokens(pa.array([s[j] if s else "" for s in split], type=pa.string()))
        fields[name] = (uniq, index[block.codes["hour"][kept]])
    for name in CATEGORICAL:
        fields[name] = (block.values[name], block.codes[name][kept].astype(np.int64))
    return labels, fields


def _load_avazu_arrow(file: Path, max_bad_rows: float) -> RawColumns:
    report = ReadReport(str(file))
    labels: list[np.ndarray] = []
    parts: dict[str, list[tuple[pa.Array, np.ndarray]]] = {name: [] for name in OUTPUT_FIELDS}
    for block in read_blocks(file, COLUMNS, ",", report, header=True, keep=COLUMNS[1:]):
        block_labels, fields = avazu_block(block, report)
        labels.append(block_labels)
        for name, part in fields.items():
            parts[name].append(part)
    report.check(max_bad_rows)
    target = np.concatenate(labels) if labels else np.zeros(0, dtype=np.float32)
    if not len(target):
        raise DataError(f"{file}: no usable rows")
    columns, dictionaries = {}, {}
    for name, field_parts in parts.items():
        dictionaries[name], columns[name] = merge_coded(field_parts)
    return RawColumns("avazu", CodedColumns(columns, dictionaries), target, info={"reads": [report.as_dict()]})


def _split_hour_or_none(text: str) -> tuple[str, str] | None:
    try:
        return _split_hour(text)
    except ValueError:
        return None
