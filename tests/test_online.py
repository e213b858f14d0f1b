"""Online training on raw ids (`train --stream --online`): hashed values reach the table unencoded, every chunk is
scored before it is trained on, memory is recorded per chunk and stays under the byte cap."""
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import shared_dataset
from embslim.cli import main
from embslim.data.stream import RAW_ID_BITS, Chunk, StreamSource, hash_values, raw_ids, synthetic_chunks
from embslim.data.synthetic import SyntheticConfig
from embslim.embeddings import EmbeddingConfig
from embslim.models import ModelOptions
from embslim.train.metrics import ctr_metrics
from embslim.train.objectives import create_objective
from embslim.train.online import raw_data, raw_fields, raw_skeleton, train_online
from embslim.train.run import RunConfig, build_model, model_data
from embslim.train.trainer import TrainConfig

SMALL = SyntheticConfig(rows=4000, cardinalities=(300, 50, 7), ranks=(4, 2, 0), seed=3)


def text_source(chunks: list[list[str]]) -> StreamSource:
    """One text field, one chunk per list of values, labels alternating."""
    def gen():
        for values in chunks:
            uniq, codes = np.unique(np.array(values), return_inverse=True)
            yield Chunk(np.arange(len(values), dtype=np.float32) % 2, {"f0": (pa.array(uniq.tolist()), codes.astype(np.int64))})

    return StreamSource("text", ["f0"], gen)


def config(method: str, budget: int | None = None, batch_size: int = 4096, **options) -> RunConfig:
    return RunConfig("fm", EmbeddingConfig(method, 4, None, budget, 0.01, options), ModelOptions(),
                     TrainConfig(epochs=1, batch_size=batch_size, lr=0.01, progress=False))


def live_keys(model) -> set[int]:
    emb = model.embedding
    return set(emb.keys[: emb.live()].tolist())


def test_hashed_ids_are_62_bit_seeded_and_equal_for_equal_values_in_any_chunk():
    values = pa.array(["", "a", "abcdefgh", "abcdefghi", "\u00e9t\u00e9"])
    ids = hash_values(values, np.arange(5))
    assert len(set(ids.tolist())) == 5 and ids.min() >= 0 and ids.max() < 2**RAW_ID_BITS
    assert hash_values(pa.array(["x", "abcdefghi"]), np.array([1, 1, 0]))[0] == ids[3]
    assert not np.array_equal(hash_values(values, np.arange(5), seed=1), ids)
    generated = hash_values(None, np.array([0, 1, 2, 1]))
    assert generated[1] == generated[3] and len(set(generated.tolist())) == 3


def test_a_value_never_seen_before_reaches_collisionless_unencoded_and_gets_a_row_at_its_min_count_th_sighting():
    first = [["old"] * 8, ["old"] * 7 + ["new"]]
    run = config("collisionless", budget=20_000, min_count=2)
    new = int(hash_values(pa.array(["new"]), np.array([0]))[0])
    _, once = train_online(text_source(first), run)
    _, twice = train_online(text_source(first + [["old"] * 7 + ["new"]]), run)
    assert new not in live_keys(once)
    assert new in live_keys(twice) and new > 2**40  # the hash itself, far above any vocabulary's ids


def test_methods_that_need_a_cardinality_read_hashed_ids_modulo_the_id_space():
    results, model = train_online(synthetic_chunks(SMALL, chunk_rows=1000), config("full"), id_space=64)
    assert model.embedding.fields[0].cardinality == 64 and results["data"]["rows"] == 4000
    assert "modulo the id space" in results["data"]["ids"]


def test_each_chunk_is_scored_by_the_model_as_it_stood_before_training_on_it():
    source = synthetic_chunks(SMALL, chunk_rows=1000)
    run = config("hash", budget=4000, batch_size=256)
    results, _ = train_online(source, run)
    untrained, _ = build_model(raw_skeleton("synthetic", source.field_names, 1 << 20), run)
    first = next(source.chunks())
    data = model_data(raw_data("synthetic", raw_fields(source.field_names, 1 << 20), raw_ids(first, source.field_names), first.label), "fm")
    untrained.eval()
    with torch.no_grad():
        logit = create_objective(untrained, data, run.train).predict(data.table)
    assert results["chunks"][0]["logloss"] == pytest.approx(ctr_metrics(first.label, logit)["logloss"], rel=1e-6)
    assert results["chunks"][-1]["logloss"] < results["chunks"][0]["logloss"]


def test_progressive_metrics_cover_every_row_and_every_row_but_the_first_chunk():
    results, _ = train_online(synthetic_chunks(SMALL, chunk_rows=1000), config("hash", budget=4000))
    m = results["metrics"]
    assert m["progressive"]["rows"] == 4000 and m["progressive_after_first_chunk"]["rows"] == 3000
    assert [c["rows"] for c in results["chunks"]] == [1000] * 4


def test_collisionless_memory_grows_over_the_stream_and_stays_under_its_cap():
    budget = 30_000
    results, _ = train_online(synthetic_chunks(SMALL, chunk_rows=500), config("collisionless", budget=budget, batch_size=128, min_count=3))
    chunks = results["chunks"]
    live = [c["live_rows"] for c in chunks]
    assert live == sorted(live) and live[-1] > live[0] > 0
    assert all(c["held_bytes"] <= budget and c["live_rows"] <= c["capacity"] for c in chunks)
    assert [c["serve_bytes"] for c in chunks] == sorted(c["serve_bytes"] for c in chunks)
    assert results["memory"]["max_held_bytes"] <= budget and all(c["rss_mb"] > 0 for c in chunks)


def test_train_online_writes_results_with_per_chunk_records_and_a_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "synthetic", "--synthetic-rows", "3000", "--stream", "--online", "--stream-chunk-rows", "1000",
                 "--drift", "0.3", "--model", "fm", "--dim", "4", "--embedding", "collisionless", "--budget", "20000",
                 "--embedding-opt", "min_count=2,expire_steps=50", "--out", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert {"progressive", "progressive_after_first_chunk"} <= set(results["metrics"])
    assert set(results["chunks"][0]) >= {"rows", "auc", "logloss", "serve_bytes", "train_bytes", "held_bytes", "live_rows", "capacity", "rss_mb"}
    assert results["memory"]["cap_bytes"] == 20000 and (out / "online.png").stat().st_size > 0
    assert "progressive AUC" in capsys.readouterr().out


def test_train_online_reads_criteo_text_in_file_order(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "criteo", "--data-path", str(shared_dataset("criteo-dac-head10k")), "--stream", "--online",
                 "--stream-chunk-rows", "2500", "--model", "fm", "--dim", "4", "--embedding", "collisionless", "--budget", "200KiB",
                 "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [c["rows"] for c in results["chunks"]] == [2500] * 4 and results["data"]["reads"][0]["rows_used"] == 10_000
    assert results["metrics"]["progressive_after_first_chunk"]["auc"] > 0.5


@pytest.mark.parametrize("flags, message", [
    (["--online"], "add --stream"),
    (["--id-space", "100"], "add --stream --online"),
    (["--stream", "--online", "--task", "topk"], "CTR rows"),
    (["--stream", "--online", "--stream-eval-rows", "100"], "does not apply"),
    (["--stream", "--online", "--min-count", "2"], "min_count"),
    (["--stream", "--online", "--epochs", "2"], "once"),
])
def test_online_flag_misuse_is_a_one_line_config_error(flags, message, capsys):
    assert main(["train", "--dataset", "synthetic", "--synthetic-rows", "3000", *flags, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
