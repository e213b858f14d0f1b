"""Bring-your-own data: a CSV or Parquet file described by a small schema.

Schema (JSON): {"label": "click", "categorical": [...], "numeric": [...],
"sequence": [...], "sequence_sep": "|", "sep": ",", "user": null, "item": null,
"timestamp": null}. Unknown keys are rejected so a typo never goes unnoticed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from embslim.data.encode import RawColumns
from embslim.data.numeric import MISSING, parse_numeric_token
from embslim.data.reader import ReadReport, read_rows, require_file
from embslim.data.vocab import flatten_bags
from embslim.errors import ConfigError, DataError


@dataclass
class TabularSchema:
    label: str
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    sequence: list[str] = field(default_factory=list)
    sequence_sep: str = "|"
    sep: str = ","
    user: str | None = None
    item: str | None = None
    timestamp: str | None = None

    @classmethod
    def from_json(cls, path: Path) -> "TabularSchema":
        require_file(path, "a JSON schema")
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown schema keys {unknown}; known keys are {sorted(known)}")
        if "label" not in spec:
            raise ConfigError(f"{path}: schema must name the 'label' column")
        return cls(**spec)

    @property
    def needed(self) -> list[str]:
        extra = [c for c in (self.timestamp,) if c]
        return [self.label, *self.categorical, *self.numeric, *self.sequence, *extra]


def load_tabular(path: Path, schema: TabularSchema, max_bad_rows: float = 0) -> RawColumns:
    """Read a CSV (header row) or Parquet file by its schema."""
    require_file(path, "a CSV or Parquet data file")
    report = ReadReport(str(path))
    records = _parquet_records(path, schema) if path.suffix == ".parquet" else _csv_records(path, schema, report)
    labels, cats, seqs, stamps = [], [], [], []
    for lineno, rec in records:
        report.rows_read += path.suffix == ".parquet"
        try:
            label = float(rec[schema.label])
        except (TypeError, ValueError):
            report.reject(lineno, schema.label, f"label is not a number: {rec[schema.label]!r}", "bad label")
            continue
        try:
            nums = [parse_numeric_token("" if rec[c] is None else str(rec[c])) for c in schema.numeric]
        except ValueError:
            bad = next(c for c in schema.numeric if not _numeric_ok(rec[c]))
            report.reject(lineno, bad, f"not a number: {rec[bad]!r}", f"bad {bad}")
            continue
        labels.append(label)
        cats.append([MISSING if rec[c] in ("", None) else str(rec[c]) for c in schema.categorical] + nums)
        seqs.append([[v for v in str(rec[c] or "").split(schema.sequence_sep) if v] for c in schema.sequence])
        if schema.timestamp:
            stamps.append(float(rec[schema.timestamp] or 0))
    report.check(max_bad_rows)
    names = [*schema.categorical, *schema.numeric]
    matrix = np.array(cats, dtype=str).reshape(len(cats), len(names))
    columns = {n: matrix[:, j] for j, n in enumerate(names)}
    bags = {c: flatten_bags([s[j] for s in seqs]) for j, c in enumerate(schema.sequence)}
    sides = {}
    if schema.user:
        sides[schema.user] = "user"
    if schema.item:
        sides[schema.item] = "item"
    for key in (schema.user, schema.item):
        if key and key not in columns:
            raise ConfigError(f"schema: user/item column {key!r} must also be listed under 'categorical'")
    tasks = ("ctr", "rating") + (("topk",) if schema.user and schema.item and schema.timestamp else ())
    timestamp = np.array(stamps) if schema.timestamp else None
    return RawColumns(path.stem, columns, np.array(labels, dtype=np.float32), bags, sides, timestamp,
                      schema.user, schema.item, tasks, {"reads": [report.as_dict()]})


def _numeric_ok(value: object) -> bool:
    try:
        parse_numeric_token("" if value is None else str(value))
        return True
    except ValueError:
        return False


def _csv_records(path: Path, schema: TabularSchema, report: ReadReport):
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split(schema.sep)
    if header == [""]:
        raise DataError(f"{path}: file is empty (expected a header line)")
    missing = [c for c in schema.needed if c not in header]
    if missing:
        raise DataError(f"{path} line 1: missing column(s) {missing}; header has {header}")
    index = {c: header.index(c) for c in schema.needed}
    for lineno, cells in read_rows(path, header, schema.sep, report, header=True, quoted=True):
        yield lineno, {c: cells[i] for c, i in index.items()}


def _parquet_records(path: Path, schema: TabularSchema):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [c for c in schema.needed if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; file has {table.column_names}")
    data = {c: table.column(c).to_pylist() for c in schema.needed}
    for i in range(table.num_rows):
        yield i + 1, {c: data[c][i] for c in schema.needed}
