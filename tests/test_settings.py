"""One KEY=VALUE parser for every settings dataclass: typed values, lists without quoting, unknown keys named."""
from dataclasses import dataclass
from typing import Literal

import pytest

from embslim.embeddings import settings_from, split_key_values
from embslim.errors import ConfigError


@dataclass(frozen=True)
class Example:
    rank: int = 4
    shared: bool = False
    lr: float = 0.1
    op: Literal["mult", "add"] = "mult"
    blocks: int | tuple[float, ...] = 6
    threshold: float | None = None


def test_comma_pieces_without_a_key_continue_the_previous_value():
    assert split_key_values(["blocks=0.01,0.1,1,rank=3", "op=add"]) == {"blocks": "0.01,0.1,1", "rank": "3", "op": "add"}


def test_strings_are_read_by_the_field_type():
    s = settings_from(Example, {"rank": "8", "shared": "true", "lr": "1e-3", "op": "add", "blocks": "0.1,1", "threshold": "none"}, "x")
    assert s == Example(8, True, 1e-3, "add", (0.1, 1.0), None)
    assert settings_from(Example, {"blocks": "3"}, "x").blocks == 3


def test_typed_values_from_the_python_api_pass_through():
    assert settings_from(Example, {"rank": 2, "blocks": [0.5, 1.0]}, "x") == Example(rank=2, blocks=(0.5, 1.0))


def test_unknown_key_is_an_error_naming_it_and_the_known_keys():
    with pytest.raises(ConfigError, match=r"'rnak'.*known: \['rank'"):
        settings_from(Example, {"rnak": "1"}, "x")


@pytest.mark.parametrize("key,value", [("rank", "four"), ("shared", "maybe"), ("op", "concat"), ("lr", "fast")])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_setting(key, value):
    with pytest.raises(ConfigError, match=key):
        settings_from(Example, {key: value}, "x")


def test_an_item_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        split_key_values("rank")
