"""Implicit-feedback CTR (`--ctr-negatives N`): every interaction a click, N sampled non-clicks per click that the
user never interacted with, carrying their own item-side fields, in their click's split, with their click's history."""
from __future__ import annotations

import numpy as np
import pytest

from embslim.data import PrepareConfig, load_dataset
from embslim.data.history import HISTORY
from embslim.errors import ConfigError
from test_din import ITEMS, write_movielens


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml") / "ml-tiny"
    write_movielens(folder)
    return folder


@pytest.fixture(scope="module", params=["random", "time"])
def implicit(release, request):
    return load_dataset("movielens-100k", "ctr", release, PrepareConfig(negatives=2, history=5, split=request.param), use_cache=False)


def decoded(data, field: str) -> np.ndarray:
    """The encoded ids of a single-valued field, one per row."""
    return data.table.ids[:, data.table.single_index(field)]


def test_every_interaction_is_a_click_with_two_non_clicks(implicit):
    assert implicit.info["ctr_negatives"] == {"per_click": 2, "clicks": 800, "non_clicks": 1600}
    assert len(implicit.table.label) == 2400 and implicit.table.label.sum() == 800


def test_a_non_click_is_an_item_its_user_never_interacted_with(implicit):
    users, items, label = decoded(implicit, "user_id"), decoded(implicit, "item_id"), implicit.table.label
    clicked = set(zip(users[label == 1].tolist(), items[label == 1].tolist()))
    assert not clicked & set(zip(users[label == 0].tolist(), items[label == 0].tolist()))


def test_a_non_click_carries_its_own_items_genres(implicit):
    items, genres = decoded(implicit, "item_id"), implicit.table.bags["genre"]
    of_item = {}
    for item, row in zip(items.tolist(), genres.tolist()):
        assert of_item.setdefault(item, row) == row


def test_non_clicks_follow_their_click_into_its_split_and_share_its_history(implicit):
    sizes = {name: len(rows) for name, rows in implicit.splits.items()}
    assert sizes == {"train": 1920, "val": 240, "test": 240}
    history, label = implicit.table.sequences[HISTORY], implicit.table.label
    owner = np.r_[np.arange(800), np.repeat(np.arange(800), 2)]
    np.testing.assert_array_equal(history, history[owner])
    for rows in implicit.splits.values():
        assert set(owner[rows].tolist()) == set(owner[rows[label[rows] == 1]].tolist())


def test_non_click_items_are_drawn_from_the_whole_catalogue_not_the_users_own(implicit):
    items = decoded(implicit, "item_id")[implicit.table.label == 0]
    assert len(np.unique(items)) > ITEMS // 2


def test_negatives_outside_ctr_are_a_one_line_config_error(release):
    with pytest.raises(ConfigError, match="--ctr-negatives"):
        load_dataset("movielens-100k", "rating", release, PrepareConfig(task="rating", negatives=1), use_cache=False)


def test_cli_trains_din_on_implicit_clicks_and_records_the_flag(release, tmp_path):
    import json

    from embslim.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "movielens-100k", "--data-path", str(release), "--task", "ctr", "--model", "din",
                 "--history", "5", "--ctr-negatives", "1", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "data_args.json").read_text())["ctr_negatives"] == 1
    assert json.loads((out / "results.json").read_text())["data"]["rows"]["train"] == 1280
