"""Line-oriented reading of delimited files that accounts for every row.

Rows with the wrong column count or a value that does not parse are counted with
their file, line and field; `ReadReport.check` fails the run when there are more
of them than the caller allows. Nothing is dropped silently.
"""
from __future__ import annotations

import bisect
import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from embslim.errors import DataError

MAX_EXAMPLES = 20


@dataclass
class RowProblem:
    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path} line {self.line}"
        return f"{where}, field {self.field!r}: {self.reason}" if self.field else f"{where}: {self.reason}"


@dataclass
class ReadReport:
    """What reading one file found: rows read, used and rejected (with reasons)."""

    path: str
    rows_read: int = 0
    rows_rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[RowProblem] = field(default_factory=list)

    @property
    def rows_used(self) -> int:
        return self.rows_read - self.rows_rejected

    def reject(self, line: int, field_name: str, reason: str, kind: str) -> None:
        """Record one malformed row; `kind` is the short reason it is tallied under.

        The examples kept are the MAX_EXAMPLES earliest lines, whatever order rows are rejected in.
        """
        self.rows_rejected += 1
        self.reasons[kind] += 1
        if len(self.examples) == MAX_EXAMPLES and line >= self.examples[-1].line:
            return
        bisect.insort(self.examples, RowProblem(self.path, line, field_name, reason), key=lambda p: p.line)
        del self.examples[MAX_EXAMPLES:]

    def check(self, max_bad_rows: float = 0) -> None:
        """Raise DataError when rejected rows exceed max_bad_rows (a count, or a fraction if < 1)."""
        if self.rows_read == 0:
            raise DataError(f"{self.path}: file has no data rows")
        allowed = max_bad_rows * self.rows_read if 0 < max_bad_rows < 1 else max_bad_rows
        if self.rows_rejected > allowed:
            raise DataError(
                f"{self.examples[0]} ({self.rows_rejected} of {self.rows_read} rows rejected, "
                f"{allowed:g} allowed; raise --max-bad-rows to skip them)"
            )

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "rows_rejected": self.rows_rejected,
            "reasons": dict(self.reasons),
            "examples": [str(p) for p in self.examples],
        }


def require_file(path: Path, what: str) -> Path:
    """The path if it is a readable file, else a DataError naming it and what it should hold."""
    if not path.exists():
        raise DataError(f"{path}: no such file ({what})")
    if not path.is_file():
        raise DataError(f"{path}: not a file ({what})")
    return path


def read_rows(
    path: Path,
    columns: list[str],
    sep: str,
    report: ReadReport,
    encoding: str = "utf-8",
    header: bool = False,
    quoted: bool = False,
    allow_extra: bool = False,
) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, cells) for each row with the expected column count.

    `header=True` checks the first line names at least the expected columns in order.
    `quoted=True` parses CSV quoting (titles with commas). `allow_extra` keeps rows with
    more cells than `columns` (the extra cells are passed through).
    """
    require_file(path, f"expected columns {', '.join(columns)}")
    with open(path, encoding=encoding, newline="" if quoted else None, errors="strict") as fh:
        lines: Iterator = _numbered(fh, sep, quoted)
        try:
            if header:
                first = next(lines, None)
                if first is None:
                    raise DataError(f"{path}: file is empty (expected a header line)")
                _, cells = first
                if [c.strip() for c in cells[: len(columns)]] != columns:
                    raise DataError(f"{path} line 1: header is {cells!r}, expected it to start with {columns!r}")
            for lineno, cells in lines:
                report.rows_read += 1
                n = len(cells)
                if n != len(columns) and not (allow_extra and n > len(columns)):
                    report.reject(lineno, "", f"expected {len(columns)} columns, found {n}", "wrong column count")
                    continue
                yield lineno, cells
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} line {report.rows_read + int(header) + 1}: not valid {encoding} text ({exc.reason})") from None


def _numbered(fh: io.TextIOBase, sep: str, quoted: bool) -> Iterator[tuple[int, list[str]]]:
    if quoted:
        reader = csv.reader(fh, delimiter=sep)
        for cells in reader:
            if cells:
                yield reader.line_num, cells
        return
    for lineno, line in enumerate(fh, 1):
        line = line.rstrip("\r\n")
        if line:
            yield lineno, line.split(sep)


def parse_cell(
    report: ReadReport, lineno: int, name: str, text: str, convert: Callable[[str], object]
) -> tuple[bool, object]:
    """Convert one cell; on failure record the row as rejected and return (False, None)."""
    try:
        return True, convert(text)
    except ValueError:
        report.reject(lineno, name, f"cannot read {text!r} as {getattr(convert, '__name__', 'value')}", f"bad {name}")
        return False, None
