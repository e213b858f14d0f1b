"""Streams with a field of 10^8-10^9 generated ids: generated, counted and trained without a table per id."""
import tracemalloc

import numpy as np
import pytest

from embslim.data import load_dataset
from embslim.data.stream import StreamConfig, count_pass, encode_chunk, synthetic_chunks, zipf_rank
from embslim.data.synthetic import SyntheticConfig
from embslim.embeddings import EmbeddingConfig
from embslim.errors import ConfigError
from embslim.train.run import RunConfig
from embslim.train.stream import run_stream
from embslim.train.trainer import TrainConfig

HUGE = 10**9  # a dense int64 counter alone would take 8 GB
CONFIG = SyntheticConfig(rows=20_000, cardinalities=(HUGE, 50, 30), ranks=(4, 2, 0), seed=5, zipf=0.8)
MB = 1 << 20


def peak_bytes(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_generated_field_is_drawn_over_its_whole_range_in_bounded_memory():
    source, peak = peak_bytes(lambda: synthetic_chunks(CONFIG, chunk_rows=5000))
    chunks, peak_draw = peak_bytes(lambda: list(source.chunks()))
    ids = np.concatenate([c.fields["field0"][1] for c in chunks])
    assert max(peak, peak_draw) < 100 * MB
    assert ids.min() >= 0 and ids.max() < HUGE and ids.max() > HUGE // 10
    assert np.array_equal(ids, np.concatenate([c.fields["field0"][1] for c in source.chunks()]))  # the same on every pass


def test_zipf_ranks_stay_in_range_and_favour_the_head():
    ranks = zipf_rank(np.random.default_rng(0).random(200_000), HUGE, 0.8)
    assert ranks.min() >= 0 and ranks.max() < HUGE
    counts = np.bincount(ranks[ranks < 100], minlength=100)
    assert counts[:10].sum() > 2 * counts[90:].sum()


def test_counting_a_huge_field_keeps_no_count_per_id_and_maps_ids_one_to_one():
    source = synthetic_chunks(CONFIG, chunk_rows=5000)
    plan, peak = peak_bytes(lambda: count_pass(source, StreamConfig(eval_rows=1000)))
    vocab = plan.vocabs["field0"]
    assert peak < 100 * MB
    assert vocab.spec.cardinality == HUGE + 1 and vocab.spec.counts.strides == (0,) and vocab.seen_values is None
    chunk = next(source.chunks())
    assert np.array_equal(encode_chunk(plan, chunk)[:, 0], chunk.fields["field0"][1] + 1)
    assert plan.vocabs["field1"].seen_values is not None  # the small fields are still counted


def test_a_compressed_table_trains_on_a_stream_with_a_huge_field_within_its_budget(tmp_path):
    budget = 4 << 20
    config = RunConfig("deepfm", EmbeddingConfig("hash", 8, budget_bytes=budget), train=TrainConfig(epochs=1, batch_size=512, progress=False))
    results = run_stream(synthetic_chunks(CONFIG, chunk_rows=5000), StreamConfig(eval_rows=1000), config, tmp_path)
    assert results["data"]["fields"]["field0"] == HUGE + 1
    assert results["data"]["vocab"]["field0"]["distinct_in_train"] is None
    assert results["embedding"]["bytes"] <= budget
    assert 0 < results["metrics"]["test"]["auc"] <= 1


def test_the_1e8_shape_is_stream_only():
    with pytest.raises(ConfigError, match="--stream"):
        load_dataset("synthetic-criteo-1e8", "ctr")
