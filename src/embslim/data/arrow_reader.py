"""Block-wise reading of delimited text with pyarrow's CSV reader, accounting for every row.

Each block arrives with every column dictionary-encoded: a code per row into that block's
distinct values, so per-value work (parsing a number, checking a label) runs once per
distinct value rather than once per row. Rows with the wrong column count are counted by
pyarrow's invalid-row handler with their line; loaders reject rows with bad values through
`Block.reject`, which turns row positions into lines. Line numbers count non-empty lines
(pyarrow skips empty lines before numbering), which equals the physical line in any file
without blank lines. Reading is single-threaded: pyarrow only numbers invalid rows then.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from embslim.data.reader import ReadReport, require_file
from embslim.errors import DataError

BLOCK_BYTES = 16 << 20


@dataclass(eq=False)
class Block:
    """One block of rows: per column, the distinct values (str) and each row's code into them."""

    values: dict[str, pa.Array]
    codes: dict[str, np.ndarray]
    first_row: int
    lines: "_LineMap"

    def __len__(self) -> int:
        return len(next(iter(self.codes.values()))) if self.codes else 0

    def line(self, row: int) -> int:
        """Line number of the block's `row`-th row."""
        return int(self.lines.lines(np.array([self.first_row + row]))[0])

    def lines_of(self, rows: np.ndarray) -> np.ndarray:
        """Line numbers of the block's rows at positions `rows`."""
        return self.lines.lines(self.first_row + rows)


class _LineMap:
    """Maps the n-th accepted row of a file to its line, given the lines pyarrow rejected (in order)."""

    def __init__(self, first_line: int) -> None:
        self.first_line = first_line
        self.skipped: list[int] = []
        self._before = np.zeros(0, dtype=np.int64)

    def lines(self, rows: np.ndarray) -> np.ndarray:
        if len(self._before) != len(self.skipped):  # rows accepted before each rejected line
            skipped = np.asarray(self.skipped, dtype=np.int64)
            self._before = skipped - self.first_line - np.arange(len(skipped))
        return rows + self.first_line + np.searchsorted(self._before, rows, side="right")


def check_header(path: Path, columns: list[str], sep: str, encoding: str = "utf-8") -> None:
    """The first line must name at least `columns`, in order (as `read_rows(header=True)` requires)."""
    with open(path, encoding=encoding, errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    if not first:
        raise DataError(f"{path}: file is empty (expected a header line)")
    cells = first.split(sep)
    if [c.strip() for c in cells[: len(columns)]] != columns:
        raise DataError(f"{path} line 1: header is {cells!r}, expected it to start with {columns!r}")


def read_blocks(
    path: Path,
    columns: list[str],
    sep: str,
    report: ReadReport,
    header: bool = False,
    keep: list[str] | None = None,
    block_bytes: int | None = None,
) -> Iterator[Block]:
    """Yield dictionary-coded blocks of the `keep` columns (default all) of a headerless or headed file.

    Every row is counted in `report`: rows with a column count other than len(columns)
    are rejected here; loaders reject rows with bad values via `report` and `Block.line`.
    No quoting: a quote character is an ordinary character, as in `read_rows`.
    """
    require_file(path, f"expected columns {', '.join(columns)}")
    if header:
        check_header(path, columns, sep)
    lines = _LineMap(first_line=2 if header else 1)

    def invalid(row: pcsv.InvalidRow) -> str:
        report.rows_read += 1
        report.reject(row.number, "", f"expected {len(columns)} columns, found {row.actual_columns}", "wrong column count")
        lines.skipped.append(row.number)
        return "skip"

    keep = keep or columns
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=columns, skip_rows=int(header), use_threads=False,
                                          block_size=block_bytes or BLOCK_BYTES),
            parse_options=pcsv.ParseOptions(delimiter=sep, quote_char=False, invalid_row_handler=invalid),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.dictionary(pa.int32(), pa.binary()) for c in keep},
                                                include_columns=keep),
        )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return  # no rows: the caller's report says so
        raise DataError(f"{path}: {str(exc).splitlines()[0]}") from None
    first_row = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise DataError(f"{path}: {str(exc).splitlines()[0]}") from None
        block = Block({}, {}, first_row, lines)
        for name in keep:
            column = batch.column(name)
            block.codes[name] = column.indices.to_numpy(zero_copy_only=False)
            block.values[name] = _as_text(column.dictionary, block, name, path)
        report.rows_read += batch.num_rows
        first_row += batch.num_rows
        yield block


def _as_text(values: pa.Array, block: Block, name: str, path: Path) -> pa.Array:
    try:
        return pc.cast(values, pa.string())
    except pa.ArrowInvalid:
        bad = next(i for i, v in enumerate(values.to_pylist()) if not _is_utf8(v))
        row = int(np.flatnonzero(block.codes[name] == bad)[0])
        raise DataError(f"{path} line {block.line(row)}: not valid utf-8 text (field {name!r})") from None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def reject_rows(report: ReadReport, block: Block, checks: list[tuple[np.ndarray, str, str, Callable[[int], str]]]) -> np.ndarray:
    """Reject each row failing a check (the first failing one names it); the mask of rows kept.

    A check is (bad-value mask over the column's distinct values, column, kind, message of the i-th distinct value).
    """
    n = len(block)
    failed = np.zeros((len(checks), n), dtype=bool)
    for k, (bad_values, column, _, _) in enumerate(checks):
        if bad_values.any():
            failed[k] = bad_values[block.codes[column]]
    bad_rows = failed.any(axis=0)
    if bad_rows.any():
        rows = np.flatnonzero(bad_rows)
        first_check = failed[:, rows].argmax(axis=0)
        for row, line, k in zip(rows.tolist(), block.lines_of(rows).tolist(), first_check.tolist()):
            _, column, kind, message = checks[k]
            report.reject(line, column, message(int(block.codes[column][row])), kind)
    return ~bad_rows


def distinct_tokens(tokens: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(distinct tokens, index of each input token among them), via pyarrow's hashing."""
    encoded = pc.dictionary_encode(tokens)
    return encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def merge_coded(parts: list[tuple[pa.Array, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Join per-block (distinct tokens, codes) into one column: codes into the sorted distinct tokens.

    Codes follow the tokens' sort order, so ranking codes ranks the tokens themselves.
    """
    if not parts:
        return np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64)
    uniq, index = distinct_tokens(pa.concat_arrays([p[0] for p in parts]))
    order = pc.sort_indices(uniq).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    offsets = np.cumsum([0] + [len(p[0]) for p in parts])
    codes = np.concatenate([rank[index[offsets[i]:offsets[i + 1]]][p[1]] for i, p in enumerate(parts)])
    return np.array(uniq.take(pa.array(order)).to_pylist(), dtype=str), codes
