"""Sequential top-k: time-ordered histories without leakage, and the SASRec / HSTU backbones."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embslim.cli import main
from embslim.data import load_dataset
from embslim.data.histories import Histories, histories
from embslim.embeddings import EmbeddingConfig, create_embedding, list_embeddings
from embslim.embeddings.full import full_bytes
from embslim.errors import ConfigError
from embslim.models import ModelOptions, create_model
from embslim.train.objective_sequence import SequenceObjective, length_grouped
from embslim.train.objectives import seen_matrix
from embslim.train.ranking import full_ranks
from embslim.train.recipes import recipe
from embslim.train.run import RunConfig, build_model, run, train_model
from embslim.train.trainer import TrainConfig, Trainer
from conftest import Interrupt


def write_sequences(folder: Path, users: int = 30, items: int = 120, length: tuple[int, int] = (4, 14), seed: int = 0) -> Path:
    """A file in the SASRec format (`user item` per line, line order is time), users' lines interleaved."""
    rng = np.random.default_rng(seed)
    events = []
    for u in range(1, users + 1):
        n = int(rng.integers(*length))
        chosen = rng.choice(np.arange(1, items + 1), n, replace=False)
        times = np.sort(rng.random(n))
        events += [(t, u, int(i)) for t, i in zip(times, chosen)]
    events.sort()
    path = folder / "Tiny.txt"
    path.write_text("".join(f"{u} {i}\n" for _, u, i in events))
    return path


def test_histories_follow_file_order_and_hold_out_the_last_two_items(tmp_path):
    path = write_sequences(tmp_path)
    data = load_dataset("amazon-video-games", "topk", path)
    lines = [line.split() for line in path.read_text().splitlines()]
    raw_item = dict(zip(data.row_items().tolist(), (item for _, item in lines)))
    user_id = dict(zip((user for user, _ in lines), data.row_users().tolist()))
    train, both = histories(data, ("train",)), histories(data, ("train", "val"))
    for user, uid in user_id.items():
        sequence = [item for u, item in lines if u == user]
        assert [raw_item[i] for i in train.of(uid).tolist()] == sequence[:-2]
        assert [raw_item[i] for i in both.of(uid).tolist()] == sequence[:-1]


def test_query_inputs_never_contain_their_held_out_item(tmp_path):
    data = load_dataset("amazon-video-games", "topk", write_sequences(tmp_path))
    data = data.select_fields([data.item_field])
    for split, before in (("val", ("train",)), ("test", ("train", "val"))):
        rows = data.splits[split]
        inputs = histories(data, before).last(data.row_users()[rows], 50)
        assert not (inputs == data.row_items()[rows][:, None]).any()
    test_rows = data.splits["test"]
    val_inputs = histories(data, ("train",)).last(data.row_users()[test_rows], 50)
    assert not (val_inputs == data.row_items()[test_rows][:, None]).any()


def test_last_keeps_the_latest_items_left_padded():
    h = Histories(np.array([0, 0, 2, 7]), np.array([5, 6, 1, 2, 3, 4, 9]))
    assert h.last(np.array([0, 1, 2]), 4).tolist() == [[-1, -1, -1, -1], [-1, -1, 5, 6], [2, 3, 4, 9]]
    assert h.last(np.array([2]), 3, drop_last=1).tolist() == [[2, 3, 4]]


def test_movielens_histories_follow_timestamps(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,300\n1,11,4,100\n1,12,4,200\n1,13,4,50\n1,14,4,400\n")
    data = load_dataset("movielens-latest-small", "topk", tmp_path)
    item_ids = data.row_items()
    by_raw = {raw: item_ids[row] for row, raw in enumerate([10, 11, 12, 13, 14])}
    assert histories(data, ("train",)).of(data.row_users()[0]).tolist() == [by_raw[13], by_raw[11], by_raw[12]]


def test_movielens_histories_carry_their_timestamps_and_sasrec_files_none(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,300\n1,11,4,100\n1,12,4,200\n1,13,4,50\n1,14,4,400\n")
    load_dataset("movielens-latest-small", "topk", tmp_path)
    data = load_dataset("movielens-latest-small", "topk", tmp_path)  # the second read comes from the cache
    train = histories(data, ("train",))
    assert train.last_times(data.row_users()[:1], 4).tolist() == [[-1, 50, 100, 200]]
    assert load_dataset("amazon-video-games", "topk", write_sequences(tmp_path)).times is None


def test_a_ranking_query_never_reads_its_held_out_items_time(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,300\n1,11,4,100\n1,12,4,200\n1,13,4,50\n1,14,4,400\n")
    data = load_dataset("movielens-latest-small", "topk", tmp_path)
    model, d = build_model(data, tiny_run(tmp_path, "hstu", options=ModelOptions(maxlen=4, heads=1, dropout=0.0)))
    item_times, query_times = SequenceObjective(model, d, QUICK).query_times("test", d.row_users()[:1])
    assert item_times.tolist() == [[50, 100, 200, 300]] and query_times.tolist() == [[100, 200, 300, 300]]


def test_time_order_survives_the_cache(tmp_path):
    path = write_sequences(tmp_path)
    first = load_dataset("amazon-video-games", "topk", path)
    second = load_dataset("amazon-video-games", "topk", path)
    assert second.order is not None and np.array_equal(first.order, second.order)


# -- backbones ---------------------------------------------------------------------------------------------------------
SEQ_MODELS = ("sasrec", "hstu")
QUICK = TrainConfig(epochs=1, batch_size=8, progress=False, seed=3)


def tiny_run(tmp_path: Path, model: str, embedding: EmbeddingConfig = EmbeddingConfig(dim=8), train: TrainConfig = QUICK,
             options: ModelOptions = ModelOptions(maxlen=10, heads=1, dropout=0.2)) -> RunConfig:
    return RunConfig(model, embedding, options, train)


@pytest.fixture
def tiny_sequences(tmp_path):
    return load_dataset("amazon-video-games", "topk", write_sequences(tmp_path, users=40, items=400, length=(6, 16)))


def test_sequence_models_embed_items_only(tiny_sequences, tmp_path):
    for name in SEQ_MODELS:
        model, data = build_model(tiny_sequences, tiny_run(tmp_path, name))
        assert [f.name for f in model.embedding.fields] == [tiny_sequences.item_field]
        assert np.array_equal(data.row_users(), tiny_sequences.row_users())


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_a_later_item_never_changes_an_earlier_output(name, tiny_sequences, tmp_path):
    model, _ = build_model(tiny_sequences, tiny_run(tmp_path, name, options=ModelOptions(maxlen=8, heads=2, dropout=0.2)))
    model.eval()
    items = torch.tensor([[-1, -1, 3, 7, 9, 4, 12, 5]])
    changed = items.clone()
    changed[0, 5] = 40
    with torch.no_grad():
        a, b = model.encode(items)[0], model.encode(changed)[0]
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("name", SEQ_MODELS)
@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_rank_scores_rank_items_as_scoring_each_item_does(name, loss, tiny_sequences, tmp_path):
    train = TrainConfig(epochs=1, batch_size=8, progress=False, seq_loss=loss, softmax_negatives=16)
    model, data = build_model(tiny_sequences, tiny_run(tmp_path, name, train=train))
    Trainer(model, data, train).train_epoch(0)
    model.eval()
    objective = SequenceObjective(model, data, train)
    rows = data.splits["test"]
    users, targets = data.row_users()[rows], data.row_items()[rows]
    fast = objective.rank_scores(users, "test")
    inputs = torch.as_tensor(histories(data, ("train", "val")).last(users, model.maxlen))
    with torch.no_grad():
        query = model.encode(inputs)[0][:, -1]
        slow = torch.stack([torch.nn.functional.cosine_similarity(query, model.embedding.lookup(0, torch.tensor([i])), dim=1)
                            if loss == "softmax" else (query * model.embedding.lookup(0, torch.tensor([i]))).sum(1)
                            for i in range(objective.n_items)], dim=1)
    known = seen_matrix(data, ("train", "val"))[users]
    assert torch.allclose(fast, slow, atol=1e-5)
    assert np.array_equal(full_ranks(fast, targets, known), full_ranks(slow, targets, known))


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_padding_changes_no_real_position_so_trimmed_histories_give_the_same_query(name, tiny_sequences, tmp_path):
    model, _ = build_model(tiny_sequences, tiny_run(tmp_path, name, options=ModelOptions(maxlen=8, heads=2, dropout=0.2)))
    model.eval()
    items = torch.tensor([[-1, -1, -1, -1, -1, 3, 7, 9], [-1, -1, -1, -1, -1, -1, -1, 5], [2, 4, 6, 8, 10, 12, 14, 16],
                          [-1, -1, -1, 11, 13, 15, 17, 19]])
    with torch.no_grad():
        padded = model.encode(items)[0]
        trimmed = model.encode(items[:1, 5:])[0]
        grouped = model.encode_last(items)
    assert torch.allclose(padded[:1, 5:], trimmed, atol=1e-5)
    assert torch.allclose(grouped, padded[:, -1], atol=1e-5)


def test_hstu_reads_the_times_and_sasrec_ignores_them(tiny_sequences, tmp_path):
    items = torch.tensor([[-1, 3, 7, 9], [2, 4, 6, 8]])
    times = (torch.tensor([[-1, 10, 500, 9000], [1, 2, 3, 4]]), torch.tensor([[10, 500, 9000, 9000], [2, 3, 4, 4]]))
    for name in SEQ_MODELS:
        model, _ = build_model(tiny_sequences, tiny_run(tmp_path, name, options=ModelOptions(maxlen=4, heads=1, dropout=0.0)))
        model.eval()
        with torch.no_grad():
            for block in model.blocks:
                if hasattr(block, "time_bias"):
                    block.time_bias.copy_(torch.linspace(-1, 1, len(block.time_bias)))  # as training would move it from zero
            plain, timed = model.encode(items)[0], model.encode(items, times)[0]
        assert torch.equal(plain, timed) == (name == "sasrec")


def test_trimmed_histories_give_the_same_query_with_times(tiny_sequences, tmp_path):
    model, _ = build_model(tiny_sequences, tiny_run(tmp_path, "hstu", options=ModelOptions(maxlen=6, heads=1, dropout=0.0)))
    model.eval()
    with torch.no_grad():
        for block in model.blocks:
            block.time_bias.copy_(torch.linspace(-1, 1, len(block.time_bias)))
    items = torch.tensor([[-1, -1, -1, -1, 3, 7], [1, 2, 3, 4, 5, 6]])
    item_times = torch.tensor([[-1, -1, -1, -1, 100, 4000], [1, 20, 300, 4000, 50000, 600000]])
    times = (item_times, torch.cat([item_times[:, 1:], item_times[:, -1:]], dim=1))
    with torch.no_grad():
        assert torch.allclose(model.encode_last(items, times), model.encode(items, times)[0][:, -1], atol=1e-5)


def test_length_grouped_batches_hold_every_user_once_in_as_many_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 60, size=5000)
    order = rng.permutation(5000)
    batches = length_grouped(order, lengths, 64, np.random.default_rng(1))
    assert len(batches) == -(-5000 // 64)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(5000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[order[i:i + 64]]) for i in range(0, 5000, 64)])
    assert spread < 0.2 * random_spread


def test_a_batch_reads_only_as_many_columns_as_its_longest_history(tiny_sequences, tmp_path):
    train = TrainConfig(batch_size=4, progress=False)
    model, data = build_model(tiny_sequences, tiny_run(tmp_path, "sasrec", train=train, options=ModelOptions(maxlen=50)))
    objective = SequenceObjective(model, data, train)
    train_histories = histories(data, ("train",))
    order = np.random.default_rng([train.seed, 0, 3]).permutation(objective.users)
    for start, batch in zip(range(0, len(order), 4), objective.batches(0)):
        users = order[start:start + 4]
        width = min(50, int(train_histories.lengths()[users].max()) - 1)
        assert batch.inputs.shape[1] == width < 50
        assert torch.equal(batch.inputs, torch.as_tensor(train_histories.last(users, 50, drop_last=1)[:, 50 - width:]))


def test_training_positions_carry_their_item_and_target_times(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{u},{i},4,{t}" for u in range(1, 11) for i, t in zip(rng.choice(60, 8, replace=False) + 1, rng.choice(10**6, 8, replace=False))]
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    data = load_dataset("movielens-latest-small", "topk", tmp_path)
    train = TrainConfig(batch_size=4, progress=False, length_batches=True)
    model, d = build_model(data, tiny_run(tmp_path, "hstu", train=train, options=ModelOptions(maxlen=8, heads=1, dropout=0.0)))
    time_of = {(int(u), int(i)): int(t) for u, i, t in zip(d.row_users(), d.row_items(), d.times)}
    user_of_history = {tuple(histories(d, ("train",)).of(u).tolist()): u for u in range(len(histories(d, ("train",))))}
    for batch in SequenceObjective(model, d, train).batches(0):
        for items, targets, item_times, query_times in zip(batch.inputs, batch.targets, *batch.times):
            real = items >= 0
            user = next(u for h, u in user_of_history.items() if h[:int(real.sum())] == tuple(items[real].tolist()))
            assert item_times[real].tolist() == [time_of[(user, int(i))] for i in items[real]]
            assert query_times[real].tolist() == [time_of[(user, int(i))] for i in targets[real]]


def test_length_batches_weigh_every_position_alike_over_an_epoch(tiny_sequences, tmp_path):
    train = TrainConfig(batch_size=4, progress=False, length_batches=True)
    model, data = build_model(tiny_sequences, tiny_run(tmp_path, "sasrec", train=train, options=ModelOptions(dropout=0.0)))
    model.train()
    objective = SequenceObjective(model, data, train)
    batches = list(objective.batches(0))
    positions = [int((b.targets >= 0).sum()) for b in batches]
    assert objective.positions_per_batch == pytest.approx(sum(positions) / len(batches))
    plain = SequenceObjective(model, data, TrainConfig(batch_size=4, progress=False))
    with torch.no_grad():
        for batch, n in zip(batches, positions):
            assert objective.loss(batch).item() == pytest.approx(plain.loss(batch).item() * n / objective.positions_per_batch, rel=1e-5)


def test_bce_negatives_are_items_the_user_has_not_trained_on(tiny_sequences, tmp_path):
    model, data = build_model(tiny_sequences, tiny_run(tmp_path, "sasrec"))
    objective = SequenceObjective(model, data, QUICK)
    users = np.repeat(objective.users, 50)
    negatives = objective.unseen_items(users, np.random.default_rng(0))
    train = histories(data, ("train",))
    assert (negatives >= 1).all() and (negatives < objective.n_items).all()
    assert not any(n in set(train.of(u).tolist()) for u, n in zip(users.tolist(), negatives.tolist()))


def test_training_lowers_the_loss_and_is_deterministic(tiny_sequences, tmp_path):
    config = tiny_run(tmp_path, "sasrec", train=TrainConfig(epochs=4, batch_size=8, progress=False, patience=10, seed=1))
    a, b = run(tiny_sequences, config), run(tiny_sequences, config)
    assert a["metrics"] == b["metrics"]
    losses = [h["train_loss"] for h in a["history"]]
    assert losses[-1] < losses[0]


def test_unknown_sequence_loss_is_a_config_error(tiny_sequences, tmp_path):
    train = TrainConfig(epochs=1, progress=False, seq_loss="hinge")
    model, data = build_model(tiny_sequences, tiny_run(tmp_path, "sasrec", train=train))
    with pytest.raises(ConfigError, match="seq_loss"):
        Trainer(model, data, train)


def test_sequence_models_are_top_k_only(tiny_sequences):
    with pytest.raises(ConfigError, match="topk"):
        create_model("sasrec", create_embedding(tiny_sequences.table.fields[1:], EmbeddingConfig(dim=4)), task="ctr")


def method_config(method: str, data) -> EmbeddingConfig:
    """A config each registered method can be built from for the item table at width 8."""
    fields = data.select_fields([data.item_field]).table.fields
    if method == "dnis":
        return EmbeddingConfig("dnis", dim=8, options={"blocks": 2})
    if method == "blockwise":
        rows = fields[0].cardinality
        layout = {"width": 8, "fields": {fields[0].name: {"blocks": [{"rows": [0, 20], "dims": list(range(8))},
                                                                        {"rows": [20, rows], "dims": [0, 1, 2]}]}}}
        return EmbeddingConfig("blockwise", dim=8, options={"layout": layout})
    return EmbeddingConfig(method, dim=8, budget_bytes=full_bytes(fields, [8]) // 2)


@pytest.mark.parametrize("method", list_embeddings())
def test_every_embedding_method_trains_under_sasrec(method, tiny_sequences, tmp_path):
    embedding = method_config(method, tiny_sequences)
    r = run(tiny_sequences, tiny_run(tmp_path, "sasrec", embedding, TrainConfig(epochs=1, batch_size=16, progress=False, eval_protocol="both")))
    assert all(np.isfinite(v) for v in r["metrics"]["test"].values())
    assert {"hr@10", "ndcg@10", "s100_hr@10"} <= set(r["metrics"]["test"])
    if embedding.budget_bytes is not None:
        assert r["embedding"]["bytes"] <= embedding.budget_bytes


@pytest.mark.parametrize("method", ["full", "mde", "qr", "int8"])
def test_embedding_methods_train_under_hstu(method, tiny_sequences, tmp_path):
    embedding = method_config(method, tiny_sequences)
    r = run(tiny_sequences, tiny_run(tmp_path, "hstu", embedding))
    assert all(np.isfinite(v) for v in r["metrics"]["test"].values())
    assert r["embedding"]["bytes"] <= embedding.budget_bytes


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_resume_after_interruption_ends_like_an_uninterrupted_run(name, tiny_sequences, tmp_path):
    config = tiny_run(tmp_path, name, train=TrainConfig(epochs=3, batch_size=8, patience=5, progress=False, seed=5))
    straight = run(tiny_sequences, config, tmp_path / "straight")
    model, data = build_model(tiny_sequences, config)
    with pytest.raises(KeyboardInterrupt):
        train_model(model, data, config, tmp_path / "resumed", callbacks=[Interrupt(at_step=6)])
    model, data = build_model(tiny_sequences, config)
    resumed = train_model(model, data, config, tmp_path / "resumed", resume=True)
    assert resumed["metrics"] == straight["metrics"]


def test_cli_trains_sasrec_and_reports_both_protocols(tmp_path):
    path = write_sequences(tmp_path, users=30, items=150)
    argv = ["train", "--dataset", "amazon-video-games", "--data-path", str(path), "--task", "topk", "--model", "sasrec", "--dim", "8",
            "--epochs", "1", "--maxlen", "12", "--seq-loss", "softmax", "--eval-protocol", "both", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"hr@10", "ndcg@10", "s100_hr@10", "s100_ndcg@10"} <= set(results["metrics"]["test"])
    assert results["config"]["model_options"]["maxlen"] == 12 and results["config"]["train"]["seq_loss"] == "softmax"
    assert results["config"]["model_options"]["heads"] == 1  # from the recipe row


def test_sequence_models_default_to_the_papers_width_and_length_batches(tmp_path):
    path = write_sequences(tmp_path, users=30, items=150)
    argv = ["train", "--dataset", "amazon-video-games", "--data-path", str(path), "--task", "topk", "--model", "sasrec",
            "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    config = json.loads((tmp_path / "run" / "results.json").read_text())["config"]
    assert config["embedding"]["dim"] == 50 and config["train"]["length_batches"] is True
    assert config["model_options"]["maxlen"] == 50 and config["model_options"]["dropout"] == 0.5


def test_a_dim_flag_overrides_the_recipes_width(tmp_path):
    path = write_sequences(tmp_path, users=30, items=150)
    argv = ["train", "--dataset", "amazon-video-games", "--data-path", str(path), "--task", "topk", "--model", "sasrec",
            "--dim", "8", "--no-length-batches", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    config = json.loads((tmp_path / "run" / "results.json").read_text())["config"]
    assert config["embedding"]["dim"] == 8 and config["train"]["length_batches"] is False


def test_movielens_gets_the_papers_movielens_settings_over_the_model_row():
    assert {k: recipe("sasrec", "topk", "movielens-100k")[k] for k in ("maxlen", "dropout")} == {"maxlen": 200, "dropout": 0.2}
    assert {k: recipe("hstu", "topk", "amazon-video-games")[k] for k in ("maxlen", "dropout")} == {"maxlen": 50, "dropout": 0.5}
    assert recipe("mf", "topk", "movielens-100k") == recipe("mf", "topk")


def test_hstu_trains_and_ranks_with_the_time_bias_on_timestamped_data(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{u},{i},4,{t}" for u in range(1, 21) for i, t in zip(rng.choice(60, 12, replace=False) + 1, rng.integers(0, 10**8, 12))]
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    data = load_dataset("movielens-latest-small", "topk", tmp_path)
    config = tiny_run(tmp_path, "hstu", train=TrainConfig(epochs=3, batch_size=4, progress=False, patience=5),
                      options=ModelOptions(maxlen=8, heads=1, dropout=0.0))
    result = run(data, config)
    assert np.isfinite(result["metrics"]["test"]["ndcg@10"])
    model, d = build_model(data, config)
    before = model.blocks[0].time_bias.detach().clone()
    Trainer(model, d, config.train).train_epoch(0)
    assert not torch.equal(before, model.blocks[0].time_bias.detach())
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0]
