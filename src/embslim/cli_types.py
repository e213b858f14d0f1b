"""Argparse `type=` functions: every flag value is checked while parsing, so a bad value is
one usage line plus one error line naming the flag (exit 2) instead of a traceback or a
run that silently does nothing.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from embslim.budget import parse_budget
from embslim.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's legacy seeding and most RNGs take 32-bit seeds
FLOAT_MAX = 3.4028234663852886e38  # largest float32: rates and penalties become float32 tensors
LR_MAX = 1e6


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not abs(value) <= FLOAT_MAX:
        raise argparse.ArgumentTypeError(f"expected a finite number (float32 range), got {text!r}")
    return value


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer flag within [low, high]."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
seed_int = int_at_least(0, SEED_MAX)


def learning_rate(text: str) -> float:
    """A number in (0, LR_MAX]: larger rates only diverge, and near float32's maximum Adam's step overflows."""
    value = _float(text)
    if not 0 < value <= LR_MAX:
        raise argparse.ArgumentTypeError(f"must be a learning rate in (0, {LR_MAX:g}], got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (penalties, exponents, thresholds, counts of bad rows)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (temperatures)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def dropout_rate(text: str) -> float:
    """A fraction in [0, 1): dropping every unit would zero the layer."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def holdout_fraction(text: str) -> float:
    """A share of rows in [0, 1): 0 holds nothing out, 1 would leave nothing to train on."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def budget_text(text: str) -> str:
    """A budget `parse_budget` accepts: a fraction in (0, 1] or a positive number of bytes. Kept as text."""
    try:
        parse_budget(text, 1)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def budget_fractions(text: str) -> tuple[float, ...]:
    """`1,0.5,0.2`: fractions of the full table, each in (0, 1]."""
    values = tuple(_float(t) for t in text.split(","))
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"every budget must be a fraction in (0, 1], got {text!r}")
    return values


def int_list(text: str) -> tuple[int, ...]:
    """`256,128`: comma-separated positive integers (MLP widths)."""
    return tuple(positive_int(t) for t in text.split(","))


def seed_set(text: str) -> tuple[int, ...]:
    """`3`: seeds 0, 1, 2; `3,4` (a comma-separated list): exactly those seeds, so a grid can be extended by
    seeds without rerunning the ones it has."""
    if "," not in text:
        return tuple(range(positive_int(text)))
    seeds = tuple(seed_int(t) for t in text.split(",") if t.strip())
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def field_dims(text: str) -> dict[str, int]:
    """`user_id=32,zip=4`: a dimension >= 0 per field name."""
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected name=int,name=int, got {text!r}")
        out[name.strip()] = non_negative_int(value)
    return out


def blocks_spec(text: str) -> int | tuple[float, ...]:
    """A block count >= 1, or increasing fractions of rows within (0, 1] such as `0.01,0.1,1`."""
    if "," not in text and "." not in text:
        return positive_int(text)
    fractions = tuple(_float(t) for t in text.split(","))
    if not (0 < fractions[0] and fractions[-1] <= 1 and all(a < b for a, b in zip(fractions, fractions[1:]))):
        raise argparse.ArgumentTypeError(f"block fractions must increase within (0, 1], got {text!r}")
    return fractions


def boolean(text: str) -> bool:
    """`true` or `false`, any case."""
    if text.strip().lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.strip().lower() == "true"


def one_of(text: str, allowed: tuple[str, ...]) -> str:
    """`text` if it is one of `allowed`, else the argparse error that lists them."""
    if text not in allowed:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(allowed)}, got {text!r}")
    return text


def dnis_score(text: str) -> str:
    """`loss` or `magnitude`: what DNIS pruning ranks (block, dimension) pairs by."""
    from embslim.search.dnis import SCORES

    return one_of(text, SCORES)


def fine_tune_source(text: str) -> str:
    """`auto`, `search` or `full`: which weights DNIS's retrain starts from under the searched mask."""
    from embslim.search.dnis import FINE_TUNE_SOURCES

    return one_of(text, FINE_TUNE_SOURCES)


def blockwise_precision(text: str) -> str:
    """`fp32`, `fp16` or `int8`: how a pruned blockwise table stores its values."""
    from embslim.embeddings.blockwise import PRECISIONS

    return one_of(text, PRECISIONS)


def network_start(text: str) -> str:
    """`auto`, `start` or `fresh`: where a DNIS retrain's network starts."""
    from embslim.search.dnis import NETWORK_STARTS

    return one_of(text, NETWORK_STARTS)


def fill_rank(text: str) -> str:
    """`below` or `scaled`: where DNIS pruning ranks the frequency prior against measured evidence."""
    from embslim.search.dnis import FILL_RANKS

    return one_of(text, FILL_RANKS)


DNIS_VALUES: dict[str, Callable[[str], object]] = {
    "blocks": positive_int, "l1": non_negative_float, "alpha_lr": learning_rate, "search_epochs": positive_int,
    "frequency_exponent": non_negative_float, "min_dims": non_negative_int, "fine_tune": boolean, "fine_tune_network": network_start,
    "fine_tune_from": fine_tune_source,
    "prune_during_search": boolean, "align": boolean, "threshold": non_negative_float,
    "score": dnis_score, "noise_z": non_negative_float, "importance_rows": positive_int, "fill": boolean,
    "fill_temperature": non_negative_float, "fill_rank": fill_rank, "search_holdout": holdout_fraction, "search_trains_weights": boolean,
    "retrain": boolean, "precision": blockwise_precision,
}  # one check per DNISConfig field, the same as the `embslim search` flags


def dnis_options(text: str) -> dict:
    """`fine_tune=false,search_epochs=1` -> DNISConfig overrides: split by the one KEY=VALUE parser, each value checked."""
    from embslim.embeddings.settings import split_key_values
    from embslim.errors import ConfigError

    try:
        values = split_key_values(text, "--dnis")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    out = {}
    for key, value in values.items():
        check = DNIS_VALUES.get(key)
        if check is None:
            raise argparse.ArgumentTypeError(f"cannot read {key}={value}: KEY must be one of {sorted(DNIS_VALUES)}")
        try:
            out[key] = check(value)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {key}={value}: {exc}") from None
    return out
