"""Vocabularies rank by training frequency with an OOV bucket; splits are reproducible."""
import numpy as np
import pytest

from embslim.data.splits import hold_out, leave_last_out, random_split, time_split, user_split
from embslim.data.vocab import fit_vocab, pad_bags
from embslim.errors import ConfigError


def test_ids_follow_descending_training_frequency():
    vocab = fit_vocab(np.array(["b", "a", "a", "c", "a", "b"]))
    assert vocab.encode(np.array(["a", "b", "c"])).tolist() == [1, 2, 3]
    assert vocab.counts.tolist() == [0, 3, 2, 1]


def test_rare_and_unseen_values_map_to_oov_bucket():
    vocab = fit_vocab(np.array(["a", "a", "b"]), min_count=2)
    assert vocab.encode(np.array(["a", "b", "zzz"])).tolist() == [1, 0, 0]
    assert vocab.counts[0] == 1 and vocab.cardinality == 2


def test_catalogue_values_absent_from_training_get_their_own_ids():
    vocab = fit_vocab(np.array([5, 5, 7]), catalogue=np.array([5, 7, 9]))
    assert vocab.encode(np.array([9])).tolist() == [3]
    assert vocab.counts[3] == 0


def test_pad_bags_right_pads_with_minus_one():
    out = pad_bags(np.array([1, 2, 3]), np.array([2, 0, 1]))
    assert out.tolist() == [[1, 2], [-1, -1], [3, -1]]


def test_random_split_is_disjoint_complete_and_seeded():
    a, b = random_split(1000, seed=3), random_split(1000, seed=3)
    assert all((a[k] == b[k]).all() for k in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(1000))
    assert [len(a[k]) for k in ("train", "val", "test")] == [800, 100, 100]


def test_time_split_trains_on_the_oldest_rows_and_tests_on_the_newest():
    times = np.random.default_rng(0).integers(0, 50, size=1000)
    s = time_split(times)
    assert [len(s[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(1000))
    assert times[s["train"]].max() <= times[s["val"]].min() and times[s["val"]].max() <= times[s["test"]].min()


def test_time_split_cuts_ties_in_time_in_file_order():
    s = time_split(np.zeros(10, dtype=np.int64))
    assert s["train"].tolist() == list(range(8)) and s["val"].tolist() == [8] and s["test"].tolist() == [9]


def test_user_split_puts_each_user_in_one_split_near_the_row_ratios_and_is_seeded():
    users = np.random.default_rng(0).integers(0, 300, size=20_000)
    a, b = user_split(users, seed=4), user_split(users, seed=4)
    assert all((a[k] == b[k]).all() for k in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(20_000))
    owners = [set(users[a[k]].tolist()) for k in ("train", "val", "test")]
    assert not owners[0] & owners[1] and not owners[0] & owners[2] and not owners[1] & owners[2]
    assert 0.75 < len(a["train"]) / 20_000 < 0.85 and 0.05 < len(a["test"]) / 20_000 < 0.15
    assert user_split(users, seed=5)["test"].tolist() != a["test"].tolist()


def test_user_split_gives_every_split_a_user_even_with_three_users():
    s = user_split(np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 2]))
    assert all(len(s[k]) for k in s)


def test_user_split_of_fewer_than_three_users_is_refused():
    with pytest.raises(ConfigError, match="at least 3 users"):
        user_split(np.array([1, 1, 2]))


def test_leave_last_out_holds_out_latest_then_second_latest():
    users = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    times = np.array([4, 1, 3, 2, 1, 2, 9, 8, 7])
    s = leave_last_out(users, times)
    assert s["test"].tolist() == [0, 6]
    assert s["val"].tolist() == [2, 7]
    assert sorted(s["train"].tolist()) == [1, 3, 4, 5, 8]


def test_hold_out_carves_its_validation_from_training_rows_only_and_is_seeded():
    splits = random_split(10_000, seed=1)
    a, b = hold_out(splits, 0.1, seed=5), hold_out(splits, 0.1, seed=5)
    assert all((a[k] == b[k]).all() for k in a)
    assert sorted(np.concatenate([a["train"], a["val"]]).tolist()) == splits["train"].tolist()
    assert not set(a["val"].tolist()) & set(splits["val"].tolist())
    assert (a["test"] == splits["test"]).all()
    assert 0.08 < len(a["val"]) / len(splits["train"]) < 0.12
