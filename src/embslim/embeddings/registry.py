"""Name -> embedding method. A new method is one file with `@register_embedding` and an import in embeddings/__init__."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TypeVar

from safetensors.torch import load_file, safe_open

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding
from embslim.errors import ConfigError

_METHODS: dict[str, type[FeatureEmbedding]] = {}
T = TypeVar("T", bound=type[FeatureEmbedding])


def register_embedding(name: str) -> Callable[[T], T]:
    """Class decorator: make a method buildable by name. The class needs
    `from_config(fields, config)` and `from_artifact(tensors, meta)` classmethods."""

    def wrap(cls: T) -> T:
        if name in _METHODS:
            raise ValueError(f"embedding method {name!r} registered twice")
        _METHODS[name] = cls
        cls.method_name = name
        return cls

    return wrap


def list_embeddings() -> list[str]:
    return sorted(_METHODS)


def create_embedding(fields: list[FieldSpec], config: EmbeddingConfig) -> FeatureEmbedding:
    """Build the method `config.method` for these fields."""
    if config.method not in _METHODS:
        raise ConfigError(f"unknown embedding method {config.method!r}; known: {list_embeddings()}")
    return _METHODS[config.method].from_config(fields, config)


def load_artifact(path: Path) -> FeatureEmbedding:
    """Rebuild a servable embedding module from an exported artifact."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["embslim"])
    if meta["method"] not in _METHODS:
        raise ConfigError(f"{path}: artifact of unknown method {meta['method']!r}")
    return _METHODS[meta["method"]].from_artifact(load_file(str(path)), meta)
