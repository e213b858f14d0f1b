"""Sequential top-k: time-ordered histories without leakage, and the SASRec / HSTU backbones."""
from pathlib import Path

import numpy as np
import pytest

from embslim.data import load_dataset
from embslim.data.histories import histories


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
    from embslim.data.histories import Histories

    h = Histories(np.array([0, 0, 2, 7]), np.array([5, 6, 1, 2, 3, 4, 9]))
    assert h.last(np.array([0, 1, 2]), 4).tolist() == [[-1, -1, -1, -1], [-1, -1, 5, 6], [2, 3, 4, 9]]
    assert h.last(np.array([2]), 3, drop_last=1).tolist() == [[2, 3, 4]]


def test_movielens_histories_follow_timestamps(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,300\n1,11,4,100\n1,12,4,200\n1,13,4,50\n1,14,4,400\n")
    data = load_dataset("movielens-latest-small", "topk", tmp_path)
    item_ids = data.row_items()
    by_raw = {raw: item_ids[row] for row, raw in enumerate([10, 11, 12, 13, 14])}
    assert histories(data, ("train",)).of(data.row_users()[0]).tolist() == [by_raw[13], by_raw[11], by_raw[12]]


def test_time_order_survives_the_cache(tmp_path):
    path = write_sequences(tmp_path)
    first = load_dataset("amazon-video-games", "topk", path)
    second = load_dataset("amazon-video-games", "topk", path)
    assert second.order is not None and np.array_equal(first.order, second.order)
