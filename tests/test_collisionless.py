"""Collisionless table: an exact id -> row map, admission after T sightings, expiry, and a byte cap never exceeded."""
import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import straight_and_resumed
from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding, load_artifact
from embslim.embeddings.base import StepContext
from embslim.errors import BudgetError, ConfigError
from embslim.train.run import RunConfig
from embslim.train.trainer import TrainConfig

DIM = 8
ROW = DIM * 4 + 16  # a row, its int64 key, int32 row index and int32 last-seen step


def build(rows=1000, n_fields=1, **options):
    fields = [FieldSpec(f"f{i}", 100, np.ones(100, dtype=np.int64)) for i in range(n_fields)]
    options.setdefault("min_count", 1)
    budget = rows * ROW + 200 + (int(rows * ROW * 0.25) if options.get("min_count", 1) > 1 else 0)
    return create_embedding(fields, EmbeddingConfig("collisionless", dim=DIM, budget_bytes=budget,
                                                    options={"filter_share": 0.2, **options}))


def raw_ids(n, seed=0):
    """Distinct raw 64-bit ids, far outside any vocabulary."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.unique(rng.integers(-2**63, 2**63 - 1, size=n, dtype=np.int64)))


def test_raw_64_bit_ids_each_get_their_own_row():
    emb = build(rows=3000)
    ids = raw_ids(2500)
    emb.observe({0: ids})
    rows = emb.rows_of(ids, 0)
    assert len(torch.unique(rows)) == len(ids) and int(rows.max()) < emb.capacity
    assert len(torch.unique(emb.lookup(0, ids), dim=0)) == len(ids)


def test_the_same_id_in_two_fields_gets_two_rows():
    emb = build(n_fields=2)
    emb.observe({0: torch.tensor([5]), 1: torch.tensor([5])})
    assert int(emb.rows_of(torch.tensor([5]), 0)) != int(emb.rows_of(torch.tensor([5]), 1))


def test_an_id_gets_a_row_at_its_min_count_th_sighting_and_reads_the_default_row_before():
    emb = build(min_count=3)
    default = emb.lookup(0, torch.tensor([10**15])).detach()
    for _ in range(2):
        emb.observe({0: torch.tensor([10**15, 7])})
        assert int(emb.rows_of(torch.tensor([10**15]), 0)) == emb.capacity
    emb.observe({0: torch.tensor([10**15])})
    assert int(emb.rows_of(torch.tensor([10**15]), 0)) < emb.capacity
    assert torch.equal(emb.lookup(0, torch.tensor([7])).detach(), default)


def test_probabilistic_admission_admits_about_95_percent_by_the_t_th_sighting():
    t, ids = 4, raw_ids(4000)
    emb = build(rows=5000, min_count=t, admission="probabilistic")
    admitted = []
    for _ in range(t):
        emb.observe({0: ids})
        admitted.append(float((emb.rows_of(ids, 0) < emb.capacity).float().mean()))
    assert abs(admitted[0] - (1 - 0.05 ** (1 / t))) < 0.04 and abs(admitted[-1] - 0.95) < 0.02


def test_the_byte_cap_holds_as_ids_stream_in_and_a_full_table_waits():
    emb = build(rows=300)
    cap = emb.held_bytes()
    first = raw_ids(200, seed=1)
    emb.observe({0: first})
    serve = [emb.memory_bytes("serve")]
    for step in range(20):
        emb.observe({0: raw_ids(100, seed=step + 2)})
        serve.append(emb.memory_bytes("serve"))
        assert emb.held_bytes() == cap and emb.live() <= emb.capacity
    assert serve[0] < serve[-1] <= cap <= emb.memory_bytes("serve") + 300 * ROW
    assert emb.live() == emb.capacity and bool((emb.rows_of(first, 0) < emb.capacity).all())


def test_a_full_table_in_evict_mode_frees_the_least_recently_seen_rows():
    emb = build(rows=100, when_full="evict")
    old = raw_ids(emb.capacity, seed=1)
    emb.observe({0: old})
    emb.observe({0: old[:60]})
    emb.observe({0: raw_ids(30, seed=2)})
    kept = emb.rows_of(old, 0) < emb.capacity
    assert bool(kept[:60].all()) and int(kept[60:].sum()) == emb.capacity - 60 - 30


def test_rows_of_ids_unseen_for_expire_steps_are_freed_and_reused():
    emb = build(rows=10, expire_steps=2)
    emb.observe({0: torch.tensor([1, 2])})
    row = int(emb.rows_of(torch.tensor([1]), 0))
    for _ in range(2):
        emb.observe({0: torch.tensor([2])})
    assert int(emb.rows_of(torch.tensor([1]), 0)) < emb.capacity  # unseen for 2 steps: not yet expired
    emb.observe({0: torch.tensor([2, 3])})
    assert int(emb.rows_of(torch.tensor([1]), 0)) == emb.capacity and int(emb.rows_of(torch.tensor([3]), 0)) == row


def test_training_lookups_feed_the_map_at_the_step_end_and_eval_lookups_never_do():
    emb = build()
    emb.eval()
    emb.lookup(0, torch.tensor([4]))
    emb.on_step_end(StepContext(1, 1))
    assert emb.live() == 0
    emb.train()
    emb.lookup(0, torch.tensor([4]))
    assert emb.live() == 0
    emb.on_step_end(StepContext(1, 1))
    assert emb.live() == 1


def test_artifact_stores_only_the_live_ids_and_serves_the_same_vectors(tmp_path):
    emb = build(rows=1000)
    ids = raw_ids(300)
    emb.observe({0: ids[:200]})
    emb.export(tmp_path / "c.safetensors")
    served = load_artifact(tmp_path / "c.safetensors")
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as fh:
        stored = sum(fh.get_tensor(k).numel() * fh.get_tensor(k).element_size() for k in fh.keys())
    assert stored == emb.memory_bytes("serve") == served.memory_bytes() == 200 * (8 + DIM * 4) + DIM * 4 + 2 * 8
    assert torch.equal(served.lookup(0, ids), emb.lookup(0, ids))


def test_the_same_seed_and_stream_give_the_same_table_and_another_seed_another():
    def run(seed):
        torch.manual_seed(0)
        emb = build(rows=500, min_count=2, admission="probabilistic", seed=seed)
        for step in range(5):
            emb.observe({0: raw_ids(300, seed=step % 2)})
        return emb
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.keys, c.keys) or not torch.equal(a.table, c.table)


def test_a_cap_below_one_row_is_a_budget_error_and_bad_settings_config_errors():
    fields = [FieldSpec("f0", 10, np.ones(10, dtype=np.int64))]
    with pytest.raises(BudgetError):
        create_embedding(fields, EmbeddingConfig("collisionless", dim=DIM, budget_bytes=60))
    for bad in ({"min_count": 0}, {"expire_steps": -1}, {"filter_share": 1.5}, {"when_full": "grow"}):
        with pytest.raises(ConfigError):
            build(**bad)


def test_resume_after_interruption_ends_like_an_uninterrupted_run(tmp_path):
    config = RunConfig("deepfm", EmbeddingConfig("collisionless", dim=DIM, budget_bytes=4_000,
                                                 options={"min_count": 3, "expire_steps": 10}),
                       train=TrainConfig(epochs=3, batch_size=256, patience=5, progress=False, seed=2))
    straight, resumed = straight_and_resumed(config, tmp_path, at_step=14)
    assert resumed["metrics"] == straight["metrics"] and resumed["embedding"] == straight["embedding"]
    assert not straight["embedding"]["note"].startswith("0 of")
