"""Train/validation/test splits as row-index arrays."""
from __future__ import annotations

import numpy as np

from embslim.errors import ConfigError


def check_ratios(ratios: tuple[float, float, float]) -> None:
    """Train/validation/test shares: positive and summing to 1 (a one-line error otherwise)."""
    if abs(sum(ratios) - 1) > 1e-6 or min(ratios) <= 0:
        raise ConfigError(f"split ratios must be positive and sum to 1, got {ratios}")


def random_split(n: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
    """Shuffle rows with `seed` and cut them by `ratios` (train, val, test)."""
    check_ratios(ratios)
    perm = np.random.default_rng(seed).permutation(n)
    a = int(round(ratios[0] * n))
    b = a + int(round(ratios[1] * n))
    return {"train": np.sort(perm[:a]), "val": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def time_split(timestamps: np.ndarray, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """The oldest rows train, the next validate, the newest test, cut by `ratios` (ties in time keep file order):
    a model is scored on interactions later than any it learned from, as it would be served."""
    check_ratios(ratios)
    n = len(timestamps)
    order = np.lexsort((np.arange(n), timestamps))
    a = int(round(ratios[0] * n))
    b = a + int(round(ratios[1] * n))
    return {"train": np.sort(order[:a]), "val": np.sort(order[a:b]), "test": np.sort(order[b:])}


def user_split(users: np.ndarray, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
    """Whole users to train, validation or test: users in a seeded order, cut where their rows reach `ratios`
    of all rows. A test user is one the model never trained on, known by side fields and behaviour history
    only (the protocol of DIN's MovieLens experiment)."""
    check_ratios(ratios)
    distinct, user_of_row, rows = np.unique(users, return_inverse=True, return_counts=True)
    if len(distinct) < 3:
        raise ConfigError(f"--split user needs at least 3 users, the data has {len(distinct)}")
    order = np.random.default_rng([seed, 7]).permutation(len(distinct))
    ends = np.cumsum(rows[order])
    a = min(max(int(np.searchsorted(ends, ratios[0] * len(users))), 1), len(distinct) - 2)  # every split gets a user
    b = min(max(int(np.searchsorted(ends, (ratios[0] + ratios[1]) * len(users))), a + 1), len(distinct) - 1)
    split_of_user = np.empty(len(distinct), dtype=np.int64)
    split_of_user[order[:a]], split_of_user[order[a:b]], split_of_user[order[b:]] = 0, 1, 2
    split_of_row = split_of_user[user_of_row]
    return {name: np.flatnonzero(split_of_row == k) for k, name in enumerate(("train", "val", "test"))}


def leave_last_out(users: np.ndarray, timestamps: np.ndarray) -> dict[str, np.ndarray]:
    """Per user, the latest interaction is test and the one before it validation.

    Users with fewer than three interactions keep them all in training. Ties in time
    keep file order.
    """
    order = np.lexsort((np.arange(len(users)), timestamps, users))
    u = users[order]
    last = np.ones(len(u), dtype=bool)
    last[:-1] = u[1:] != u[:-1]
    second = np.zeros(len(u), dtype=bool)
    second[:-1] = last[1:] & (u[1:] == u[:-1])
    starts = np.r_[0, np.flatnonzero(last[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(u)])
    enough = np.repeat(sizes >= 3, sizes)
    test = order[last & enough]
    val = order[second & enough]
    train = order[~((last | second) & enough)]
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def hold_out(splits: dict[str, np.ndarray], fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Splits whose "val" is a seeded `fraction` of the training rows and whose "train" is the rest
    (the test rows unchanged): a search that fits its own parameters on held-out data without
    touching the validation split that later selects and reports the model."""
    if not 0 < fraction < 1:
        raise ConfigError(f"held-out fraction must be in (0, 1), got {fraction}")
    train = splits["train"]
    held = np.random.default_rng([seed, 31]).random(len(train)) < fraction
    return {"train": train[~held], "val": train[held], "test": splits["test"]}
