"""Reading delimited files: every row is accounted for, bad input fails with file, line and field."""
from pathlib import Path

import pytest

from embslim.data.reader import ReadReport, parse_cell, read_rows
from embslim.errors import DataError


def write(tmp_path: Path, text: str, name: str = "f.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rows_with_wrong_column_count_are_counted_with_their_line(tmp_path):
    path = write(tmp_path, "a\tb\nc\nd\te\tf\ng\th\n")
    report = ReadReport(str(path))
    rows = list(read_rows(path, ["x", "y"], "\t", report))
    assert [line for line, _ in rows] == [1, 4]
    assert (report.rows_read, report.rows_used, report.rows_rejected) == (4, 2, 2)
    assert report.examples[0].line == 2 and "expected 2 columns, found 1" in report.examples[0].reason


def test_check_fails_by_default_naming_file_line_and_field(tmp_path):
    report = ReadReport("ratings.csv")
    report.rows_read = 10
    parse_cell(report, 7, "rating", "abc", float)
    with pytest.raises(DataError, match=r"ratings.csv line 7, field 'rating': cannot read 'abc'"):
        report.check()


def test_check_tolerates_bad_rows_up_to_a_count_or_fraction():
    report = ReadReport("x")
    report.rows_read = 100
    for line in range(3):
        report.reject(line, "f", "bad", "bad f")
    report.check(3)
    report.check(0.05)
    with pytest.raises(DataError):
        report.check(0.02)


def test_empty_file_is_an_error(tmp_path):
    path = write(tmp_path, "")
    report = ReadReport(str(path))
    list(read_rows(path, ["x"], "\t", report))
    with pytest.raises(DataError, match="no data rows"):
        report.check()


def test_missing_file_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_rows(tmp_path / "nope.tsv", ["x"], "\t", ReadReport("nope")))


def test_header_must_match_expected_columns(tmp_path):
    path = write(tmp_path, "user,item\n1,2\n", "r.csv")
    with pytest.raises(DataError, match="line 1: header"):
        list(read_rows(path, ["userId", "movieId"], ",", ReadReport(str(path)), header=True))
