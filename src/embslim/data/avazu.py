"""Avazu CTR CSV: id, click, hour (YYMMDDHH) and 21 categorical columns.

`hour` becomes two fields, hour-of-day and weekday; `id` is dropped (unique per row).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from embslim.data.encode import RawColumns
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


def load_avazu(path: Path, max_bad_rows: float = 0) -> RawColumns:
    """Read an Avazu CSV file (or a folder holding train.csv / train)."""
    file = path
    if path.is_dir():
        file = next((path / n for n in ("train.csv", "train") if (path / n).exists()), path / "train.csv")
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
