"""Criteo display-ads TSV: label, I1-I13 integer counts, C1-C26 hashed categoricals.

Integers are bucketised with the log-squared rule, categoricals below `min_count`
training occurrences go to the OOV bucket; an empty cell is its own "missing" value.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embslim.data.arrow_reader import Block, distinct_tokens, merge_coded, read_blocks, reject_rows
from embslim.data.encode import CodedColumns, RawColumns
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


def load_criteo(
    path: Path, max_bad_rows: float = 0, max_rows: int | None = None, engine: Literal["arrow", "python"] = "arrow"
) -> RawColumns:
    """Read a Criteo TSV file (or the folder that holds it).

    The default `arrow` engine reads blocks with pyarrow and returns dictionary-coded columns;
    `python` is the line-by-line reader it replaced, kept as the reference it must agree with;
    `max_rows` (stop at the line that gives that many used rows) also reads line by line.
    """
    file = find_criteo_file(path)
    if engine == "arrow" and max_rows is None:
        return _load_criteo_arrow(file, max_bad_rows)
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


def criteo_block(block: Block, report: ReadReport) -> tuple[np.ndarray, dict[str, tuple[pa.Array, np.ndarray]]]:
    """Labels and per-field (distinct tokens, codes) of a block's valid rows; bad rows go to `report`.

    Numeric cells are bucketised once per distinct text, so the tokens equal the line reader's.
    """
    label_text = block.values["label"].to_pylist()
    checks = [(np.array([t not in ("0", "1") for t in label_text], dtype=bool), "label", "bad label",
               lambda i: f"label must be 0 or 1, found {label_text[i]!r}")]
    numeric_tokens: dict[str, list[str]] = {}
    for name in INT_FIELDS:
        texts = block.values[name].to_pylist()
        tokens = [_token_or_none(t) for t in texts]
        numeric_tokens[name] = [t or MISSING for t in tokens]
        checks.append((np.array([t is None for t in tokens], dtype=bool), name, f"bad {name}",
                       lambda i, texts=texts: f"not a number: {texts[i]!r}"))
    kept = reject_rows(report, block, checks)
    labels = np.array([float(t) if t in ("0", "1") else 0.0 for t in label_text], dtype=np.float32)[block.codes["label"][kept]]
    fields: dict[str, tuple[pa.Array, np.ndarray]] = {}
    for name in INT_FIELDS + CAT_FIELDS:
        codes = block.codes[name][kept]
        if name in numeric_tokens:
            uniq, index = distinct_tokens(pa.array(numeric_tokens[name], type=pa.string()))
            fields[name] = (uniq, index[codes])
            continue
        values = block.values[name]
        tokens = pc.if_else(pc.equal(values, ""), pa.scalar(MISSING), values)
        if pc.any(pc.equal(values, MISSING)).as_py():  # a literal MISSING cell merges with the empty ones
            uniq, index = distinct_tokens(tokens)
            fields[name] = (uniq, index[codes])
        else:  # the block's distinct values stay distinct
            fields[name] = (tokens, codes.astype(np.int64))
    return labels, fields


def _load_criteo_arrow(file: Path, max_bad_rows: float) -> RawColumns:
    report = ReadReport(str(file))
    labels: list[np.ndarray] = []
    parts: dict[str, list[tuple[pa.Array, np.ndarray]]] = {name: [] for name in INT_FIELDS + CAT_FIELDS}
    for block in read_blocks(file, COLUMNS, "\t", report):
        block_labels, fields = criteo_block(block, report)
        labels.append(block_labels)
        for name, part in fields.items():
            parts[name].append(part)
    report.check(max_bad_rows)
    columns, dictionaries = {}, {}
    for name, field_parts in parts.items():
        dictionaries[name], columns[name] = merge_coded(field_parts)
    target = np.concatenate(labels) if labels else np.zeros(0, dtype=np.float32)
    return RawColumns("criteo", CodedColumns(columns, dictionaries), target, info={"reads": [report.as_dict()]})


@functools.lru_cache(maxsize=1 << 20)
def _token_or_none(text: str) -> str | None:
    """The bucket token of a numeric cell, None if it is not a number (memoised: blocks repeat values)."""
    try:
        return parse_numeric_token(text)
    except (ValueError, OverflowError):
        return None
