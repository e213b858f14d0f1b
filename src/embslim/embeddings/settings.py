"""One `KEY=VALUE` parser for every typed settings dataclass (CLI flags, bench options, Python API).

A method's settings are a frozen dataclass; `settings_from` builds one from a mapping
whose values are either already typed (the Python API) or strings (the command line),
converting strings by the field's annotation. Unknown or missing keys are one-line
`ConfigError`s that name the known keys, so a typo never passes silently.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from embslim.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """Settings of a method that has none."""


def split_key_values(items: str | Sequence[str] | None, where: str = "option") -> dict[str, str]:
    """`["a=1,b=0.1,0.5", "c=x"]` -> {"a": "1", "b": "0.1,0.5", "c": "x"}.

    Items are split at commas; a piece without `=` continues the previous value, so
    list values such as `blocks=0.01,0.1,1` need no quoting.
    """
    if items is None:
        return {}
    pieces = [p.strip() for item in ([items] if isinstance(items, str) else items) for p in item.split(",")]
    out: dict[str, str] = {}
    key = None
    for piece in filter(None, pieces):
        if "=" in piece:
            key, _, value = piece.partition("=")
            key = key.strip()
            if not key or not value.strip():
                raise ConfigError(f"cannot read {where} {piece!r}: expected KEY=VALUE")
            out[key] = value.strip()
        elif key is None:
            raise ConfigError(f"cannot read {where} {piece!r}: expected KEY=VALUE")
        else:
            out[key] += "," + piece
    return out


def settings_from(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """An instance of the dataclass `cls` from `values`; `where` names the owner in errors."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {known or 'none'}")
    typed = {k: _coerce(v, hints[k], f"{where} setting {k!r}") for k, v in values.items()}
    try:
        return cls(**typed)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def settings_dict(settings: Any) -> dict:
    """JSON-ready settings (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none" and type(None) in args):
            if type(None) in args:
                return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot read {value!r} as {_name(hint)}")
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in items)
    if hint is dict or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, (str, Path)):
            text = str(value)
            return json.loads(Path(text).read_text() if not text.lstrip().startswith("{") else text)
        raise ConfigError(f"{where}: expected a mapping or a JSON file, got {value!r}")
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint in (int, float):
        exact = isinstance(value, int) or (hint is float and isinstance(value, float))
        if exact and not isinstance(value, bool):
            return hint(value)
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{where}: settings of type {_name(hint)} are not supported")
    raise ConfigError(f"{where}: cannot read {value!r} as {_name(hint)}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
