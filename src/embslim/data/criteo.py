"""Criteo display-ads TSV: label, I1-I13 integer counts, C1-C26 hashed categoricals.

Integers are bucketised with the log-squared rule, categoricals below `min_count`
training occurrences go to the OOV bucket; an empty cell is its own "missing" value.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embslim.data.encode import RawColumns
from embslim.data.numeric import MISSING, parse_numeric_token
from embslim.data.reader import ReadReport, read_rows
from embslim.errors import DataError

INT_FIELDS = [f"I{i}" for i in range(1, 14)]
CAT_FIELDS = [f"C{i}" for i in range(1, 27)]
COLUMNS = ["label", *INT_FIELDS, *CAT_FIELDS]


def find_criteo_file(path: Path) -> Path:
    """`path` itself, or in a folder train.txt, else its only .txt/.tsv file."""
    if path.is_file() or not path.exists():
        return path
    if (path / "train.txt").exists():
        return path / "train.txt"
    candidates = sorted([*path.glob("*.txt"), *path.glob("*.tsv")])
    if len(candidates) != 1:
        raise DataError(f"{path}: expected train.txt or a single .txt/.tsv Criteo file, found {[c.name for c in candidates]}")
    return candidates[0]


def load_criteo(path: Path, max_bad_rows: float = 0, max_rows: int | None = None) -> RawColumns:
    """Read a Criteo TSV file (or the folder that holds it)."""
    file = find_criteo_file(path)
    report = ReadReport(str(file))
    labels: list[float] = []
    cells_out: list[list[str]] = []
    for lineno, cells in read_rows(file, COLUMNS, "\t", report):
        if cells[0] not in ("0", "1"):
            report.reject(lineno, "label", f"label must be 0 or 1, found {cells[0]!r}", "bad label")
            continue
        try:
            tokens = [parse_numeric_token(c) for c in cells[1:14]]
        except ValueError:
            bad = next(i for i, c in enumerate(cells[1:14]) if not _is_number(c))
            report.reject(lineno, INT_FIELDS[bad], f"not a number: {cells[1 + bad]!r}", f"bad {INT_FIELDS[bad]}")
            continue
        labels.append(float(cells[0]))
        cells_out.append(tokens + [c or MISSING for c in cells[14:]])
        if max_rows is not None and len(labels) >= max_rows:
            break
    report.check(max_bad_rows)
    matrix = np.array(cells_out, dtype=str)
    columns = {name: matrix[:, j] for j, name in enumerate(INT_FIELDS + CAT_FIELDS)}
    return RawColumns("criteo", columns, np.array(labels, dtype=np.float32), info={"reads": [report.as_dict()]})


def _is_number(text: str) -> bool:
    try:
        parse_numeric_token(text)
        return True
    except ValueError:
        return False
