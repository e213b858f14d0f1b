"""Streaming input: vocabularies from one counting pass, a held-out tail, chunked generation, one epoch in chunks."""
import json

import numpy as np
import pytest

from embslim.cli import main
from embslim.data.criteo import load_criteo
from embslim.data.stream import FieldCounter, StreamConfig, count_pass, encode_chunk, split_pass, synthetic_chunks, text_chunks
from embslim.data.synthetic import SyntheticConfig
from embslim.data.vocab import fit_vocab
from embslim.errors import DataError
from conftest import shared_dataset

SMALL = SyntheticConfig(rows=6000, cardinalities=(300, 50, 7), ranks=(4, 2, 0), seed=3)


def all_rows(source):
    chunks = list(source.chunks())
    return {name: np.concatenate([c.fields[name][1] for c in chunks]) for name in source.field_names}, np.concatenate([c.label for c in chunks])


def test_stream_vocabularies_equal_vocabularies_fitted_on_the_training_rows_in_memory():
    source = synthetic_chunks(SMALL, chunk_rows=700)
    plan = count_pass(source, StreamConfig(eval_rows=500, min_count=2))
    columns, _ = all_rows(source)
    for name, column in columns.items():
        vocab = fit_vocab(column[: plan.train_rows], 2)
        assert np.array_equal(plan.vocabs[name].spec.counts, vocab.counts)
        assert np.array_equal(plan.vocabs[name].encode(None, column), vocab.encode(column))


def test_validation_and_test_are_the_last_rows_in_order_whatever_the_chunking():
    source = synthetic_chunks(SMALL, chunk_rows=700)
    plan = count_pass(source, StreamConfig(eval_rows=500))
    assert (plan.rows, plan.train_rows, plan.eval_rows) == (6000, 5000, 500)
    pieces = list(split_pass(source, plan))
    sizes = {s: sum(len(c) for name, c in pieces if name == s) for s in ("train", "val", "test")}
    assert sizes == {"train": 5000, "val": 500, "test": 500}
    assert [name for name, _ in pieces] == sorted((name for name, _ in pieces), key=["train", "val", "test"].index)
    _, labels = all_rows(source)
    assert np.array_equal(np.concatenate([c.label for name, c in pieces if name == "test"]), labels[-500:])


def test_held_out_rows_are_at_most_a_tenth_of_a_short_stream_each():
    plan = count_pass(synthetic_chunks(SMALL, chunk_rows=1000), StreamConfig(eval_rows=100_000))
    assert plan.eval_rows == 600 and plan.train_rows == 4800


def test_generated_stream_is_the_same_on_every_pass():
    source = synthetic_chunks(SMALL, chunk_rows=1000)
    (a, la), (b, lb) = all_rows(source), all_rows(source)
    assert np.array_equal(la, lb) and all(np.array_equal(a[k], b[k]) for k in a)


def test_drift_moves_the_popular_ids_over_the_stream():
    config = SyntheticConfig(rows=20_000, cardinalities=(1000,), ranks=(4,), seed=1)
    for drift, moved in ((0.0, False), (0.5, True)):
        chunks = list(synthetic_chunks(config, chunk_rows=5000, drift=drift).chunks())
        first, last = (np.bincount(c.fields["field0"][1], minlength=1000).argmax() for c in (chunks[0], chunks[-1]))
        assert (first != last) == moved


def test_counter_over_its_distinct_cap_keeps_the_most_frequent_values_and_says_where_it_pruned():
    import pyarrow as pa

    counter = FieldCounter(None, max_distinct=2)
    values = pa.array(["a", "b", "c", "d", "e"])
    counter.add(values, np.array([0, 0, 0, 1, 1, 2, 3, 4]))
    assert set(counter.sparse) == {"a", "b"} and counter.pruned_at == 1


def test_text_stream_counts_rows_as_the_in_memory_reader_and_encodes_like_its_vocabulary():
    path = shared_dataset("criteo-dac-head10k")
    source = text_chunks("criteo", path, block_bytes=300_000)
    plan = count_pass(source, StreamConfig(eval_rows=1000, min_count=3))
    assert source.report.as_dict() == load_criteo(path).info["reads"][0]
    raw = load_criteo(path)
    train_ids = np.concatenate([encode_chunk(plan, c) for name, c in split_pass(source, plan) if name == "train"])
    for j, name in enumerate(plan.vocabs):
        vocab = fit_vocab(raw.columns[name][: plan.train_rows], 3)
        assert np.array_equal(train_ids[:, j], vocab.encode(raw.columns[name][: plan.train_rows])), name


def test_text_stream_over_the_bad_row_allowance_is_a_data_error(tmp_path):
    good = "\t".join(["1"] + ["5"] * 13 + ["68fd1e64"] * 26)
    (tmp_path / "train.txt").write_text("\n".join([good] * 30 + ["0\tx"]) + "\n")
    with pytest.raises(DataError, match="line 31: expected 40 columns"):
        count_pass(text_chunks("criteo", tmp_path), StreamConfig(eval_rows=1))


def test_train_stream_trains_one_epoch_and_reports_the_tail_split_and_loader_speed(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "synthetic", "--synthetic-rows", "6000", "--stream", "--stream-chunk-rows", "1500",
                 "--stream-eval-rows", "500", "--drift", "0.2", "--model", "fm", "--embedding", "hash", "--budget", "0.5",
                 "--out", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["rows"] == {"stream": 6000, "train": 5000, "val": 500, "test": 500}
    assert results["data"]["split"].startswith("tail")
    assert 0 < results["metrics"]["test"]["auc"] < 1 and results["timing"]["count_pass_rows_per_second"] > 0
    assert "peak RSS" in capsys.readouterr().out


def test_train_stream_over_several_epochs_is_a_one_line_error(capsys):
    assert main(["train", "--dataset", "synthetic", "--synthetic-rows", "6000", "--stream", "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "one epoch" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flags", [["--split", "time"], ["--ctr-negatives", "1"], ["--online", "--split", "time"]])
def test_stream_with_a_split_or_sampled_non_clicks_is_a_one_line_error_not_ignored(capsys, flags):
    assert main(["train", "--dataset", "synthetic", "--synthetic-rows", "6000", "--stream", "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "leave out --history, --resume, --split and --ctr-negatives" in err and len(err.splitlines()) == 1


def test_avazu_text_streams_with_its_hour_fields_and_bad_rows_counted(tmp_path):
    header = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
              "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")
    row = "1,{},{},1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79"
    rows = [row.format(i % 2, f"141021{i % 24:02d}") for i in range(40)] + [row.format(0, "notanhour")]
    (tmp_path / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    source = text_chunks("avazu", tmp_path, max_bad_rows=1)
    plan = count_pass(source, StreamConfig(eval_rows=4))
    assert source.report.as_dict()["reasons"] == {"bad hour": 1}
    assert (plan.rows, plan.train_rows) == (40, 32)
    assert plan.vocabs["hour_of_day"].spec.cardinality == 1 + 24


def test_train_stream_reads_criteo_text(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "criteo", "--data-path", str(shared_dataset("criteo-dac-head10k")), "--stream",
            "--stream-eval-rows", "1000", "--model", "fm", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["reads"][0]["rows_used"] == 10_000
    assert results["data"]["rows"]["test"] == 1000 and results["metrics"]["test"]["auc"] > 0.5
