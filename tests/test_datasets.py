"""Dataset readers on the real files (when present) and on files written in the exact published formats."""
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from embslim.data import PrepareConfig, SyntheticConfig, load_dataset
from embslim.data.avazu import load_avazu
from embslim.data.criteo import load_criteo
from embslim.data.fetch import Archive, fetch_archive
from embslim.data.movielens import load_movielens
from embslim.data.numeric import log2_bucket
from embslim.data.synthetic import synthetic_config
from embslim.data.tabular import TabularSchema, load_tabular
from embslim.errors import ConfigError, DataError
from conftest import shared_dataset


def test_movielens_100k_reads_every_rating_with_user_and_item_features(ml100k):
    raw = load_movielens(ml100k)
    assert len(raw.target) == 100_000
    assert set(raw.columns) == {"user_id", "item_id", "gender", "age", "occupation", "zip"}
    assert "genre" in raw.bags and raw.info["ratings_without_user_row"] == 0
    assert raw.info["reads"][0]["rows_rejected"] == 0


def test_movielens_ctr_labels_ratings_of_four_and_up_as_clicks(ml100k):
    data = load_dataset("movielens-100k", "ctr", ml100k)
    assert data.table.label.mean() == pytest.approx(0.5537, abs=1e-4)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 80000, "val": 10000, "test": 10000}


def test_movielens_1m_format_is_read_with_double_colon_and_latin1(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n2::10::3::978302109\n1::20::4::978301968\n", encoding="latin-1")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n", encoding="latin-1")
    (tmp_path / "movies.dat").write_text("10::Café (1995)::Comedy|Drama\n20::Jumanji (1995)::Adventure\n", encoding="latin-1")
    raw = load_movielens(tmp_path)
    assert raw.columns["gender"].tolist() == ["F", "M", "F"]
    assert raw.columns["age"].tolist() == ["1", "56", "1"]
    assert raw.bags["genre"][1].tolist() == [2, 2, 1]


def test_movielens_1m_without_ratings_file_says_which_file_is_missing():
    path = shared_dataset("movielens-1m-metadata")
    with pytest.raises(DataError, match="no MovieLens ratings file"):
        load_movielens(path)


def test_movielens_csv_release_reads_quoted_titles(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story, The (1995)",Animation|Comedy\n3,X (1995),(no genres listed)\n')
    raw = load_movielens(tmp_path)
    assert raw.target.tolist() == [4.0, 4.5]
    assert raw.bags["genre"][1].tolist() == [2, 0]


def test_movielens_bad_rating_is_reported_with_file_line_and_field(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,four,964981247\n")
    with pytest.raises(DataError, match=r"ratings.csv line 3, field 'rating'"):
        load_movielens(tmp_path)


def test_real_criteo_rows_are_all_used_and_fields_bucketised():
    raw = load_criteo(shared_dataset("criteo-dac-head10k"))
    read = raw.info["reads"][0]
    assert read["rows_read"] == read["rows_used"] == 10_000
    assert raw.target.mean() == pytest.approx(0.2182)
    assert len(raw.columns) == 39


def test_criteo_broken_rows_are_counted_by_reason(tmp_path):
    good = "\t".join(["1"] + ["5"] * 13 + ["68fd1e64"] * 26)
    short = "\t".join(["0"] + ["5"] * 13)
    junk = "\t".join(["0", "x"] + ["5"] * 12 + ["a"] * 26)
    (tmp_path / "train.txt").write_text("\n".join([good, short, junk, good]) + "\n")
    raw = load_criteo(tmp_path, max_bad_rows=2)
    read = raw.info["reads"][0]
    assert (read["rows_read"], read["rows_used"], read["rows_rejected"]) == (4, 2, 2)
    assert read["reasons"] == {"wrong column count": 1, "bad I1": 1}


def test_log2_bucketing_shares_buckets_for_large_counts():
    assert log2_bucket(1) == "v1" and log2_bucket(-2) == "v-2"
    assert log2_bucket(1000) == log2_bucket(1010) != log2_bucket(5000)


def test_avazu_hour_becomes_hour_of_day_and_weekday(tmp_path):
    header = "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
    row = "1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79"
    (tmp_path / "train.csv").write_text(f"{header}\n{row}\n{row.replace(',0,14102100', ',1,14102523')}\n")
    raw = load_avazu(tmp_path)
    assert raw.columns["hour_of_day"].tolist() == ["0", "23"]
    assert raw.columns["weekday"].tolist() == ["1", "5"]
    assert raw.target.tolist() == [0.0, 1.0]


def test_tabular_csv_and_parquet_give_the_same_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps({"label": "y", "categorical": ["u"], "numeric": ["n"], "sequence": ["tags"]}))
    (tmp_path / "d.csv").write_text("y,u,n,tags\n1,a,3,x|y\n0,b,,z\n")
    pq.write_table(pa.table({"y": [1, 0], "u": ["a", "b"], "n": [3.0, None], "tags": ["x|y", "z"]}), tmp_path / "d.parquet")
    schema = TabularSchema.from_json(schema_path)
    csv_raw, pq_raw = load_tabular(tmp_path / "d.csv", schema), load_tabular(tmp_path / "d.parquet", schema)
    for raw in (csv_raw, pq_raw):
        assert raw.columns["u"].tolist() == ["a", "b"]
        assert raw.columns["n"].tolist() == ["b1", "<missing>"]
        assert raw.bags["tags"][1].tolist() == [2, 1]


def test_tabular_missing_column_names_file_and_column(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"label": "y", "categorical": ["u", "v"]}))
    (tmp_path / "d.csv").write_text("y,u\n1,a\n")
    with pytest.raises(DataError, match=r"d.csv line 1: missing column\(s\) \['v'\]"):
        load_tabular(tmp_path / "d.csv", TabularSchema.from_json(tmp_path / "s.json"))


def test_tabular_schema_rejects_unknown_keys(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"label": "y", "categoricals": ["u"]}))
    with pytest.raises(ConfigError, match="unknown schema keys"):
        TabularSchema.from_json(tmp_path / "s.json")


def test_second_load_comes_from_the_cache(ml100k, isolated_cache):
    first = load_dataset("movielens-100k", "rating", ml100k)
    entries = list((isolated_cache / "prepared").glob("*.npz"))
    second = load_dataset("movielens-100k", "rating", ml100k)
    assert len(entries) == 1
    assert np.array_equal(first.table.ids, second.table.ids) and np.array_equal(first.table.bags["genre"], second.table.bags["genre"])
    assert [f.counts.tolist() for f in first.table.fields] == [f.counts.tolist() for f in second.table.fields]


def test_cache_key_changes_when_an_input_file_changes(tmp_path, isolated_cache):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n2,1,3.0,2\n3,2,5.0,3\n4,2,1.0,4\n5,3,2.0,5\n")
    load_dataset("movielens-latest-small", "rating", tmp_path, PrepareConfig(ratios=(0.6, 0.2, 0.2)))
    with open(tmp_path / "ratings.csv", "a") as fh:
        fh.write("6,3,4.0,6\n")
    load_dataset("movielens-latest-small", "rating", tmp_path, PrepareConfig(ratios=(0.6, 0.2, 0.2)))
    assert len(list((isolated_cache / "prepared").glob("*.npz"))) == 2


def make_zip(tmp_path: Path) -> Path:
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t100\n")
    return archive


def test_fetch_verifies_checksum_and_extracts(tmp_path):
    archive = make_zip(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    folder = fetch_archive(Archive(archive.as_uri(), f"md5:{md5}", "ml-100k"), tmp_path / "data", progress=False)
    assert (folder / "u.data").read_text().startswith("1\t1\t5")


def test_fetch_with_wrong_checksum_deletes_download_and_extracts_nothing(tmp_path):
    archive = make_zip(tmp_path)
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_archive(Archive(archive.as_uri(), "md5:" + "0" * 32, "ml-100k"), tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "ml-100k").exists() and not (tmp_path / "data" / "ml-100k.zip").exists()


def test_fetch_refuses_archives_without_a_checksum_unless_allowed(tmp_path):
    with pytest.raises(DataError, match="no fixed checksum"):
        fetch_archive(Archive(make_zip(tmp_path).as_uri(), None, "ml-100k"), tmp_path / "data", progress=False)


def test_criteo_shaped_generated_data_has_26_fields_with_capped_criteo_cardinalities():
    data = load_dataset("synthetic-criteo", synthetic=synthetic_config("synthetic-criteo", rows=5000))
    planted = data.info["planted"]
    assert len(data.table.fields) == 26 and len(planted) == 26
    assert max(p["cardinality"] for p in planted.values()) == 1_000_000
    assert data.info["rows"]["train"] + data.info["rows"]["val"] + data.info["rows"]["test"] == 5000


def test_large_generated_data_is_cached_and_read_back_identically(isolated_cache):
    config = SyntheticConfig(rows=1_000_000, cardinalities=(20, 10), ranks=(2, 1))
    first = load_dataset("synthetic", synthetic=config)
    assert list((isolated_cache / "prepared").glob("synthetic-ctr-*.npz"))
    second = load_dataset("synthetic", synthetic=config)
    assert (first.table.ids == second.table.ids).all() and (first.table.label == second.table.label).all()
