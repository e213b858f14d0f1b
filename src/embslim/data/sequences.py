"""Interaction sequences, one `user item` pair per line in time order (the SASRec file format).

There are no timestamps: the line number is the time, so leave-last-out holds out
each user's last and second-to-last lines. Top-k only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embslim.data.encode import RawColumns
from embslim.data.reader import ReadReport, read_rows
from embslim.errors import DataError


def find_sequence_file(path: Path) -> Path:
    if path.is_file() or not path.exists():
        return path
    candidates = sorted(path.glob("*.txt"))
    if len(candidates) != 1:
        raise DataError(f"{path}: expected one .txt interaction file, found {[c.name for c in candidates]}")
    return candidates[0]


def load_sequences(path: Path, max_bad_rows: float = 0) -> RawColumns:
    file = find_sequence_file(path)
    report = ReadReport(str(file))
    users, items, lines = [], [], []
    for lineno, cells in read_rows(file, ["user_id", "item_id"], " ", report):
        users.append(cells[0])
        items.append(cells[1])
        lines.append(lineno)
    report.check(max_bad_rows)
    columns = {"user_id": np.array(users), "item_id": np.array(items)}
    return RawColumns(file.stem.lower(), columns, np.ones(len(users), dtype=np.float32), {}, {"user_id": "user", "item_id": "item"},
                      np.array(lines, dtype=np.int64), "user_id", "item_id", ("topk",), {"reads": [report.as_dict()]},
                      timestamp_is_time=False)
