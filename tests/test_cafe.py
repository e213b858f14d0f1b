"""CAFE: a HotSketch finds the hot ids online; they own rows, cold ids share a hashed table, all within the budget."""
import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import straight_and_resumed
from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding, load_artifact
from embslim.embeddings.base import StepContext
from embslim.embeddings.cafe import scheduled
from embslim.errors import BudgetError, ConfigError
from embslim.train.run import RunConfig
from embslim.train.trainer import TrainConfig

DIM = 8


def build(cards=(5000,), budget=20_000, **options):
    fields = [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]
    return create_embedding(fields, EmbeddingConfig("cafe", dim=DIM, budget_bytes=budget, options=options))


def zipf_stream(n_ids=5000, steps=60, batch=512, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_ids + 1) ** 1.1
    perm = rng.permutation(n_ids)  # frequent ids scattered over the id space, not the smallest ones
    for _ in range(steps):
        yield torch.from_numpy(perm[rng.choice(n_ids, batch, p=p / p.sum())]), perm


def hot_ids(emb, field=0):
    return set(emb.sketch_ids[emb.sketch_rows >= 0].tolist())


def test_sketch_keeps_the_truly_frequent_ids_hot_on_a_zipf_stream():
    emb = build(threshold=5)
    for ids, perm in zipf_stream():
        emb.observe(0, ids)
    capacity = int(emb.hot[0])
    top = set(perm[:capacity // 2].tolist())
    assert len(hot_ids(emb)) == capacity and len(top & hot_ids(emb)) >= 0.9 * len(top)


def test_training_lookups_feed_the_sketch_at_the_step_end_and_eval_lookups_never_do():
    emb = build(threshold=1)
    ids = torch.tensor([3, 3, 7])
    emb.eval()
    emb.lookup(0, ids)
    emb.on_step_end(StepContext(1, 1))
    assert not (emb.sketch_ids >= 0).any()
    emb.train()
    before = emb.lookup(0, ids)
    assert torch.equal(before, emb.lookup(0, ids)) and not (emb.sketch_ids >= 0).any()
    emb.on_step_end(StepContext(1, 1))
    assert hot_ids(emb) == {3, 7}


def test_an_id_becomes_hot_at_the_threshold_and_keeps_its_vector_when_it_migrates():
    emb = build(threshold=4)
    ids = torch.tensor([42])
    vec = emb.lookup(0, ids).detach().clone()
    for _ in range(3):
        emb.observe(0, ids)
    assert not bool(emb.rows_of(ids, 0)[1])
    rows = emb.observe(0, ids)
    row, is_hot = emb.rows_of(ids, 0)
    assert bool(is_hot) and rows.tolist() == row.tolist() and int(row) >= emb.hash_total
    assert torch.equal(emb.lookup(0, ids).detach(), vec)


def test_a_hot_row_starts_with_a_fresh_optimiser_state():
    emb = build(threshold=2)
    opt = torch.optim.SparseAdam([emb.table], lr=0.01)
    emb.train()
    for step in (1, 2):  # the id reads its hashed row twice and becomes hot at the end of step 2
        emb.lookup(0, torch.tensor([9])).sum().backward()
        opt.step()
        opt.zero_grad()
        if step == 1:
            opt.state[emb.table]["exp_avg"].fill_(1.0)  # as if the pool's rows had served an evicted id
        emb.on_step_end(StepContext(step, 2, [opt]))
    hot_row = int(emb.rows_of(torch.tensor([9]), 0)[0])
    state = opt.state[emb.table]["exp_avg"]
    assert hot_row >= emb.hash_total and not state[hot_row].any() and state[0].all()


def test_decay_gives_the_rows_of_ids_below_the_threshold_back_to_the_pool():
    emb = build(threshold=2, decay=0.5)
    emb.observe(0, torch.tensor([1, 1, 2, 2, 2, 2, 2, 2]))
    assert hot_ids(emb) == {1, 2}
    emb.inserted[0] = 10 * int(emb.hot[0]) * 2 + 1  # past the decay point
    emb.observe(0, torch.tensor([5]))
    assert hot_ids(emb) == {2} and (emb.sketch_rows >= 0).sum() == 1


def test_a_full_bucket_of_hot_ids_records_no_newcomer():
    emb = build(threshold=1, slots=1)
    emb.observe(0, torch.tensor([11]))
    buckets = emb.buckets_of(torch.arange(5000), 0)
    bucket = int(buckets[11])
    rival = next(i for i in torch.nonzero(buckets == bucket).flatten().tolist() if i != 11)
    emb.observe(0, torch.tensor([rival] * 5))
    assert emb.sketch_ids[bucket].tolist() == [11]


def test_a_newcomer_replaces_the_lowest_cold_slot_and_inherits_its_score():
    emb = build(threshold=100, slots=2)
    buckets = emb.buckets_of(torch.arange(5000), 0)
    same = torch.nonzero(buckets == buckets[0]).flatten()[:3].tolist()
    emb.observe(0, torch.tensor([same[0]] * 5 + [same[1]] * 3))
    emb.observe(0, torch.tensor([same[2]] * 2))
    slots = dict(zip(emb.sketch_ids[buckets[0]].tolist(), emb.sketch_scores[buckets[0]].tolist()))
    assert slots == {same[0]: 5.0, same[2]: 5.0}


def test_bytes_stay_within_the_budget_and_do_not_change_as_ids_stream_in():
    budget = 20_000
    emb = build(budget=budget, threshold=2)
    start = emb.memory_bytes()
    for ids, _ in zipf_stream(steps=20):
        emb.observe(0, ids)
    assert emb.memory_bytes() == start and 0.97 * budget <= start <= budget


def test_the_sketch_and_hot_map_are_charged_and_stored():
    emb = build(budget=20_000, slots=4)
    buckets = int(emb.hot[0])
    assert emb.index_bytes() == buckets * 4 * 12 + 5 * 8
    assert emb.weight_bytes() == (emb.hash_total + buckets) * DIM * 4


def test_exported_artifact_serves_the_hot_ids_as_trained(tmp_path):
    emb = build(threshold=3)
    for ids, _ in zipf_stream(steps=10):
        emb.observe(0, ids)
    emb.export(tmp_path / "cafe.safetensors")
    served = load_artifact(tmp_path / "cafe.safetensors")
    probe = torch.arange(5000)
    assert int(emb.rows_of(probe, 0)[1].sum()) > 0
    assert torch.equal(served.lookup(0, probe), emb.lookup(0, probe))
    with safe_open(str(tmp_path / "cafe.safetensors"), framework="pt") as fh:
        stored = sum(fh.get_tensor(k).numel() * fh.get_tensor(k).element_size() for k in fh.keys())
    assert stored == emb.memory_bytes() == served.memory_bytes()


def test_the_same_seed_and_stream_give_the_same_sketch_and_another_seed_another():
    def run(seed):
        torch.manual_seed(0)
        emb = build(threshold=3, seed=seed)
        for ids, _ in zipf_stream(steps=10):
            emb.observe(0, ids)
        return emb
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.sketch_ids, c.sketch_ids)


def test_a_field_that_fits_stays_whole_without_a_sketch():
    emb = build(cards=(30, 5000), budget=20_000)
    assert emb.hashed[0] == 30 and emb.hot[0] == 0 and emb.hot[1] > 0
    assert torch.equal(emb.rows_of(torch.arange(30), 0)[0], torch.arange(30))


def test_defaults_follow_the_reference_criteo_schedule():
    assert scheduled(0.1) == (20.0, 0.5) and scheduled(0.01) == (100.0, 0.3) and scheduled(1e-6) == (500.0, 0.1)
    emb = build(budget=5000 * DIM * 4 // 100)
    assert emb.threshold == 100.0


def test_budget_below_one_row_per_field_is_a_budget_error_and_bad_settings_config_errors():
    with pytest.raises(BudgetError):
        build(cards=(100, 100), budget=100)
    for bad in ({"slots": 0}, {"hash_rate": 1.5}, {"threshold": -1}, {"decay": 0}):
        with pytest.raises(ConfigError):
            build(**bad)


def test_resume_after_interruption_ends_like_an_uninterrupted_run(tmp_path):
    config = RunConfig("deepfm", EmbeddingConfig("cafe", dim=DIM, budget_bytes=2_000, options={"threshold": 5}),
                       train=TrainConfig(epochs=3, batch_size=256, patience=5, progress=False, seed=2))
    straight, resumed = straight_and_resumed(config, tmp_path, at_step=14)
    assert resumed["metrics"] == straight["metrics"] and resumed["embedding"] == straight["embedding"]
    assert "hot rows in use" in straight["embedding"]["note"] and not straight["embedding"]["note"].startswith("0 of")
