"""DIN and the behaviour-history field: histories built from timestamps without leakage, read through
the item table, padding-proof attention, and every embedding method behind DIN."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embslim.data import PrepareConfig, load_dataset
from embslim.data.history import HISTORY, behaviour_history
from embslim.embeddings import EmbeddingConfig, SparseBatch, list_embeddings, method_info
from embslim.embeddings.full import full_bytes
from embslim.errors import ConfigError
from embslim.models import ModelOptions
from embslim.train.run import RunConfig, build_model, fit
from embslim.train.trainer import TrainConfig

USERS, ITEMS, PER_USER = 40, 300, 20


def write_movielens(folder: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tiny release in the MovieLens-100K format; timestamps from a small range, so many rows tie."""
    rng = np.random.default_rng(seed)
    rows = [(u, i, int(rng.integers(1, 6)), int(rng.integers(0, 12)))
            for u in range(1, USERS + 1) for i in rng.choice(np.arange(1, ITEMS + 1), PER_USER, replace=False)]
    rows = [rows[k] for k in rng.permutation(len(rows))]  # file order is not time order
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (folder / "u.user").write_text("".join(f"{u}|{20 + u % 30}|{'MF'[u % 2]}|job{u % 5}|{10000 + u % 7}\n" for u in range(1, USERS + 1)))
    flags = lambda i: "|".join("1" if g in (i % 19, i * 7 % 19) else "0" for g in range(19))  # noqa: E731  one or two genres
    (folder / "u.item").write_text("".join(f"{i}|Movie {i}|01-Jan-1995||http://x/{i}|{flags(i)}\n" for i in range(1, ITEMS + 1)))
    users, items, _, stamps = (np.array(c) for c in zip(*rows))
    return users, items, stamps


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    folder = tmp_path_factory.mktemp("ml") / "ml-tiny"
    return folder, write_movielens(folder)


@pytest.fixture(scope="module")
def with_history(release):
    return load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(history=5), use_cache=False)


def test_time_split_of_a_release_tests_on_its_latest_ratings_and_is_cached_apart_from_the_random_one(release, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBSLIM_CACHE_DIR", str(tmp_path))
    _, (_, _, stamps) = release
    by_time = load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(split="time"))
    shuffled = load_dataset("movielens-100k", "ctr", release[0], PrepareConfig())
    assert stamps[by_time.splits["train"]].max() <= stamps[by_time.splits["test"]].min()
    assert stamps[shuffled.splits["train"]].max() > stamps[shuffled.splits["test"]].min()
    assert load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(split="time")).splits["test"].tolist() == by_time.splits["test"].tolist()


def test_user_split_of_a_release_tests_on_users_it_never_trained_on(release):
    _, (users, _, _) = release
    by_user = load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(split="user"), use_cache=False)
    assert not set(users[by_user.splits["train"]].tolist()) & set(users[by_user.splits["test"]].tolist())


def test_user_split_of_data_without_users_is_a_one_line_error(capsys):
    from embslim.cli import main

    assert main(["train", "--dataset", "synthetic", "--synthetic-rows", "2000", "--split", "user", "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--split user needs a user column" in err[0]


def test_time_split_of_data_without_timestamps_is_a_one_line_error(capsys):
    from embslim.cli import main

    assert main(["train", "--dataset", "synthetic", "--synthetic-rows", "2000", "--split", "time", "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--split time needs timestamps" in err[0]


def test_history_is_the_latest_strictly_earlier_items_of_the_same_user_oldest_first(release, with_history):
    _, (users, items, stamps) = release
    table = with_history.table
    item_ids = table.ids[:, table.single_index("item_id")]
    history = table.sequences[HISTORY]
    for r in range(len(users)):
        earlier = [s for s in range(len(users)) if users[s] == users[r] and stamps[s] < stamps[r]]
        earlier.sort(key=lambda s: (stamps[s], s))
        expected = [int(item_ids[s]) for s in earlier[-5:]]
        assert history[r].tolist() == expected + [-1] * (5 - len(expected))


def test_no_history_holds_its_own_row_or_any_later_or_simultaneous_interaction(release):
    """On the raw item ids (each user rates an item once), where no OOV bucket merges items."""
    _, (users, items, stamps) = release
    history = behaviour_history(users, stamps, items, 5)
    for r in range(len(users)):
        known_by_then = {int(items[s]) for s in range(len(users)) if users[s] == users[r] and stamps[s] < stamps[r]}
        held = set(history[r][history[r] >= 0].tolist())
        assert held <= known_by_then
        assert int(items[r]) not in held
        assert len(held) == min(5, len(known_by_then))


def test_history_ids_are_item_field_ids_and_add_no_field_table_or_bytes(release, with_history):
    plain = load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(), use_cache=False)
    assert [f.name for f in with_history.table.fields] == [f.name for f in plain.table.fields]
    assert with_history.table.sequence_fields == {HISTORY: "item_id"}
    items = next(f for f in with_history.table.fields if f.name == "item_id")
    assert with_history.table.sequences[HISTORY].max() < items.cardinality
    config = RunConfig("din", EmbeddingConfig(dim=8))
    din, _ = build_model(with_history, config)
    base, _ = build_model(plain, config)
    assert din.embedding_bytes() == base.embedding_bytes()


def test_history_survives_the_dataset_cache(release):
    first = load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(history=5))
    cached = load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(history=5))
    np.testing.assert_array_equal(cached.table.sequences[HISTORY], first.table.sequences[HISTORY])
    assert cached.table.sequence_fields == first.table.sequence_fields
    assert load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(history=3)).table.sequences[HISTORY].shape[1] == 3


def test_ties_in_time_share_one_history_and_file_order_orders_earlier_ties():
    users = np.array(["a", "a", "a", "a"])
    stamps = np.array([2, 1, 2, 1])
    items = np.array([10, 11, 12, 13])
    assert behaviour_history(users, stamps, items, 3).tolist() == [[11, 13, -1], [-1, -1, -1], [11, 13, -1], [-1, -1, -1]]


def din_batch(data, extra_padding: int = 0) -> SparseBatch:
    batch = SparseBatch.from_table(data.split("train"), np.arange(64))
    seq = batch.sequences[HISTORY]
    batch.sequences[HISTORY] = torch.cat([seq, seq.new_full((len(seq), extra_padding), -1)], dim=1)
    return batch


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_padding_never_changes_the_din_output(with_history, mode):
    torch.manual_seed(0)
    model, data = build_model(with_history, RunConfig("din", EmbeddingConfig(dim=8), ModelOptions(dropout=0.0)))
    model.train(mode == "train")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        torch.testing.assert_close(model(din_batch(data, 7)), model(din_batch(data)))


def test_din_attention_weights_are_not_normalised(with_history):
    """Doubling a behaviour (the same item twice) changes the pooled history: weights are not a softmax."""
    torch.manual_seed(0)
    model, data = build_model(with_history, RunConfig("din", EmbeddingConfig(dim=8)))
    model.eval()
    batch = din_batch(data)
    seq = batch.sequences[HISTORY][:, :1]
    vectors = model.embedding(batch)
    field = model.sequences[HISTORY]
    once = model.pool_sequence(HISTORY, field, seq, vectors)
    twice = model.pool_sequence(HISTORY, field, torch.cat([seq, seq], dim=1), vectors)
    torch.testing.assert_close(twice, [2 * part for part in once])


def test_flag_off_leaves_deepfm_inputs_as_today(release):
    plain = load_dataset("movielens-100k", "ctr", release[0], PrepareConfig(), use_cache=False)
    assert plain.table.sequences == {} and HISTORY not in plain.info
    model, data = build_model(plain, RunConfig("deepfm", EmbeddingConfig(dim=8)))
    assert model.input_dims == model.embedding.dims
    assert model.deep[0].in_features == sum(model.embedding.dims)
    batch = SparseBatch.from_table(data.split("val"))
    model.eval()
    torch.testing.assert_close(model(batch), model.score(model.embedding(batch)) + model.bias)


def item_genres(data) -> dict[int, list[int]]:
    """Each item id's genre ids, read off the rows that hold the item; none for the OOV id 0, which stands for many items."""
    items = data.table.ids[:, data.table.single_index("item_id")]
    return {int(i): [] if i == 0 else sorted(int(g) for g in genres if g >= 0) for i, genres in zip(items, data.table.bags["genre"])}


def test_flag_on_gives_deepfm_the_mean_of_the_history_items_rows_and_of_their_genre_vectors(with_history):
    model, data = build_model(with_history, RunConfig("deepfm", EmbeddingConfig(dim=8)))
    assert model.deep[0].in_features == sum(model.embedding.dims) + 2 * 8
    batch = SparseBatch.from_table(data.split("val"))
    history = batch.sequences[HISTORY]
    *_, pooled_items, pooled_genres = model.input_vectors(batch)
    item, genre = model.sequences[HISTORY], [f.name for f in model.embedding.fields].index("genre")
    genres_of = item_genres(data)
    assert (history == 0).any(), "the check covers an OOV behaviour"
    for row in range(len(history)):
        ids = history[row][history[row] >= 0]
        expected_items = model.embedding.lookup(item, ids).mean(0) if len(ids) else torch.zeros(8)
        per_item = [model.embedding.lookup(genre, torch.tensor(genres_of[int(i)])).mean(0) if genres_of[int(i)] else torch.zeros(8)
                    for i in ids]
        expected_genres = torch.stack(per_item).mean(0) if per_item else torch.zeros(8)
        torch.testing.assert_close(pooled_items[row], expected_items)
        torch.testing.assert_close(pooled_genres[row], expected_genres)


def test_din_attends_over_behaviours_of_item_and_genre_against_the_candidates_item_and_genre(with_history):
    din, _ = build_model(with_history, RunConfig("din", EmbeddingConfig(dim=8)))
    assert din.side_fields == [[f.name for f in din.embedding.fields].index("genre")]
    assert din.attention[HISTORY].layers[0].in_features == 4 * (8 + 8)
    assert din.deep[0].in_features == sum(din.embedding.dims) + 8 + 8


def test_the_oov_item_of_a_history_has_no_genre(with_history):
    model, _ = build_model(with_history, RunConfig("deepfm", EmbeddingConfig(dim=8)))
    parts = model.behaviour_rows(model.sequences[HISTORY], torch.tensor([[0, -1]]))
    assert parts[1].abs().sum() == 0


def test_history_with_topk_or_a_model_that_ignores_it_is_a_config_error(release, with_history):
    with pytest.raises(ConfigError, match="history"):
        load_dataset("movielens-100k", "topk", release[0], PrepareConfig(history=5), use_cache=False)
    with pytest.raises(ConfigError, match="does not read a behaviour history"):
        build_model(with_history, RunConfig("mf", EmbeddingConfig(dim=8)))


def method_config(method: str, fields, dim: int = 8) -> tuple[EmbeddingConfig, int | None]:
    """A config each method can be built from on the tiny release: half the full bytes, or its own example."""
    if method == "dnis":
        return EmbeddingConfig("dnis", dim=dim, options={"blocks": 2}), None
    if method == "blockwise":
        layout = {"width": dim, "fields": {f.name: {"blocks": [{"rows": [0, f.cardinality], "dims": [0, 1, 2]}]} for f in fields}}
        return EmbeddingConfig("blockwise", dim=dim, options={"layout": layout}), None
    assert method_info(method).budgeted, f"{method}: add an example config here"
    budget = full_bytes(fields, [dim] * len(fields)) // 2
    return EmbeddingConfig(method, dim=dim, budget_bytes=budget), budget


@pytest.mark.parametrize("method", list_embeddings())
def test_every_embedding_method_trains_under_din_with_the_history(with_history, method):
    config, budget = method_config(method, with_history.table.fields)
    train = TrainConfig(epochs=1, batch_size=256, progress=False)
    model, _, results = fit(with_history, RunConfig("din", config, ModelOptions(hidden=(16,)), train))
    assert np.isfinite(results["metrics"]["test"]["auc"])
    assert model.sequences == {HISTORY: [f.name for f in model.embedding.fields].index("item_id")}
    if budget is not None:
        assert results["embedding"]["bytes"] <= budget


def test_cli_trains_din_with_the_history_flag_and_records_it(release, tmp_path):
    from embslim.cli import main

    out = tmp_path / "run"
    argv = ["train", "--dataset", "movielens-100k", "--data-path", str(release[0]), "--model", "din", "--history", "4",
            "--dim", "4", "--epochs", "1", "--hidden", "8", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["history"]["max_length"] == 4
    assert HISTORY not in results["embedding"]["dims"]
    assert json.loads((out / "data_args.json").read_text())["history"] == 4


def test_cli_refuses_history_for_a_model_that_ignores_it_in_one_line(release, capsys):
    from embslim.cli import main

    code = main(["train", "--dataset", "movielens-100k", "--data-path", str(release[0]), "--model", "mf", "--history", "4", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not read a behaviour history" in err


def test_a_din_run_whose_behaviours_carry_genres_exports_and_serves_its_outputs(with_history, tmp_path):
    from embslim.serve.export import export_run
    from test_export import model_outputs, served_from, trained_run

    model, data = trained_run(with_history, "din", EmbeddingConfig(dim=4), tmp_path / "run")
    assert model.side_fields
    export_run(tmp_path / "run", tmp_path / "model")
    test = data.split("test")
    batch = SparseBatch.from_table(test)
    served = served_from(tmp_path / "model")(batch.ids, batch.bags, batch.sequences)
    assert torch.allclose(served, model_outputs(model, test), rtol=1e-5, atol=1e-6)
