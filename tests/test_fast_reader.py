"""The pyarrow block reader of Criteo and Avazu text agrees with the line reader it replaced, row accounting included."""
from pathlib import Path

import numpy as np
import pytest

from embslim.data import arrow_reader
from embslim.data.avazu import load_avazu
from embslim.data.criteo import load_criteo
from embslim.data.encode import CodedColumns, PrepareConfig, RawColumns, prepare
from embslim.data.reader import ReadReport
from embslim.errors import DataError
from conftest import shared_dataset

GOOD = "\t".join(["1", "5", "-2", "", "1000", "0.5", "3", "", "7", "1e3", " 4", "nan", "2", "120"] + ["68fd1e64", "", "80e26c9b"] * 8 + ["a", "b"])
AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
                "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")
AVAZU_ROW = "10000094,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79"


def assert_same_raw(a: RawColumns, b: RawColumns) -> None:
    assert a.info == b.info
    assert np.array_equal(a.target, b.target)
    assert list(a.columns) == list(b.columns)
    for name in b.columns:
        assert np.array_equal(a.columns[name], b.columns[name]), name


def assert_same_prepared(a: RawColumns, b: RawColumns, min_count: int) -> None:
    pa_, pb = prepare(a, PrepareConfig(min_count=min_count)), prepare(b, PrepareConfig(min_count=min_count))
    assert np.array_equal(pa_.table.ids, pb.table.ids)
    assert [(f.name, f.cardinality) for f in pa_.table.fields] == [(f.name, f.cardinality) for f in pb.table.fields]
    assert all(np.array_equal(f.counts, g.counts) for f, g in zip(pa_.table.fields, pb.table.fields))
    assert pa_.info == pb.info


def broken_criteo(tmp_path: Path) -> Path:
    cells = GOOD.split("\t")
    rows = [
        GOOD,
        "\t".join(cells[:14]),                       # too few columns
        "\t".join(["2"] + cells[1:]),                # bad label
        "\t".join(cells[:5] + ["x5"] + cells[6:]),   # bad I5
        "\t".join(cells[:3] + ["?"] + cells[4:6] + ["y"] + cells[7:]),  # bad I3 and I6: I3 names it
        GOOD.replace("68fd1e64", "0aa1"),
        GOOD + "\textra",                            # too many columns
        "\t".join(["0"] + cells[1:13] + ["inf"] + cells[14:]),  # a number too large to bucket
        "\t".join(["0", "3"] + cells[2:]) + "\r",    # CRLF line end
        '"1"\t' + "\t".join(cells[1:]),              # quotes are ordinary characters: a bad label
    ]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(rows) + "\n\n")
    return path


def test_real_criteo_rows_read_and_encode_exactly_as_the_line_reader():
    path = shared_dataset("criteo-dac-head10k")
    fast, slow = load_criteo(path), load_criteo(path, engine="python")
    assert isinstance(fast.columns, CodedColumns) and not isinstance(slow.columns, CodedColumns)
    assert_same_raw(fast, slow)
    assert_same_prepared(fast, slow, min_count=10)


def test_criteo_bad_rows_are_counted_per_reason_with_their_lines_as_the_line_reader_counts_them(tmp_path):
    path = broken_criteo(tmp_path)
    fast = load_criteo(path, max_bad_rows=10)
    read = fast.info["reads"][0]
    assert (read["rows_read"], read["rows_used"], read["rows_rejected"]) == (10, 3, 7)
    assert read["reasons"] == {"wrong column count": 2, "bad label": 2, "bad I5": 1, "bad I3": 1, "bad I13": 1}
    assert [e.split(":")[0].split(",")[0].rsplit(" ", 1)[1] for e in read["examples"]] == ["2", "3", "4", "5", "7", "8", "10"]
    slow_rows = [r for r in path.read_text().splitlines() if "inf" not in r]  # the line reader crashes on inf
    (tmp_path / "noinf").mkdir()
    (tmp_path / "noinf" / "train.txt").write_text("\n".join(slow_rows) + "\n")
    assert_same_raw(load_criteo(tmp_path / "noinf", 10), load_criteo(tmp_path / "noinf", 10, engine="python"))


def test_criteo_fails_in_one_line_over_the_bad_row_allowance_naming_the_first_bad_line(tmp_path):
    path = broken_criteo(tmp_path)
    with pytest.raises(DataError, match=r"train.txt line 2: expected 40 columns, found 14 \(7 of 10 rows rejected, 5 allowed"):
        load_criteo(path, max_bad_rows=5)


def test_many_small_blocks_give_the_same_columns_as_one(tmp_path, monkeypatch):
    path = shared_dataset("criteo-dac-head10k")
    whole = load_criteo(path)
    monkeypatch.setattr(arrow_reader, "BLOCK_BYTES", 50_000)
    assert_same_raw(load_criteo(path), whole)
    assert_same_prepared(load_criteo(path), whole, min_count=2)


def test_invalid_utf8_is_a_data_error_naming_the_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes((GOOD + "\n").encode() + GOOD.replace("68fd1e64", "\xff").encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"line 2: not valid utf-8"):
        load_criteo(path)


def test_avazu_reads_as_the_line_reader_with_bad_clicks_and_hours_counted(tmp_path):
    rows = [AVAZU_ROW, AVAZU_ROW.replace(",0,14102100", ",1,14102523"), AVAZU_ROW.replace(",0,14102100", ",2,14102100"),
            AVAZU_ROW.replace(",0,14102100", ",0,14109999"), AVAZU_ROW + ",x", AVAZU_ROW.replace("1fbe01fe", "ab")]
    (tmp_path / "train.csv").write_text("\n".join([AVAZU_HEADER, *rows]) + "\n")
    fast, slow = load_avazu(tmp_path, 3), load_avazu(tmp_path, 3, engine="python")
    assert fast.info["reads"][0]["reasons"] == {"bad click": 1, "bad hour": 1, "wrong column count": 1}
    assert fast.columns["hour_of_day"].tolist() == ["0", "23", "0"]
    assert_same_raw(fast, slow)
    assert_same_prepared(fast, slow, min_count=1)


def test_avazu_header_is_checked(tmp_path):
    (tmp_path / "train.csv").write_text("a,b\n" + AVAZU_ROW + "\n")
    with pytest.raises(DataError, match="line 1: header"):
        load_avazu(tmp_path)


def test_report_keeps_the_earliest_example_lines_whatever_order_rows_are_rejected_in():
    report = ReadReport("f")
    for line in [50, *range(100, 130), 3]:
        report.reject(line, "", "bad", "bad")
    assert [e.line for e in report.examples][:3] == [3, 50, 100]
    assert len(report.examples) == 20 and report.rows_rejected == 32


def test_a_literal_missing_token_merges_with_empty_cells_as_in_the_line_reader(tmp_path):
    cells = GOOD.split("\t")
    rows = [GOOD, "\t".join(cells[:14] + ["<missing>"] + cells[15:]), "\t".join(cells[:14] + [""] + cells[15:])]
    (tmp_path / "train.txt").write_text("\n".join(rows) + "\n")
    fast, slow = load_criteo(tmp_path), load_criteo(tmp_path, engine="python")
    assert fast.columns["C1"].tolist() == ["68fd1e64", "<missing>", "<missing>"]
    assert_same_raw(fast, slow)
    assert_same_prepared(fast, slow, min_count=1)
