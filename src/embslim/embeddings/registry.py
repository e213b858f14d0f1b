"""Name -> embedding method, with its typed settings and what kind of method it is.

A new method is one file: a `FeatureEmbedding` subclass decorated with
`@register_embedding(name, settings=..., budgeted=..., source=...)` and an import in
embeddings/__init__. The benchmark, the CLI and the tests ask this registry what a
method is; none of them keeps a list of names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypeVar

from safetensors.torch import load_file, safe_open

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, fields_from_meta
from embslim.embeddings.settings import NoSettings, settings_from
from embslim.errors import ConfigError

Source = Literal["scratch", "trained", "search"]
T = TypeVar("T", bound=type[FeatureEmbedding])


@dataclass(frozen=True)
class MethodInfo:
    """What a method is.

    budgeted: it can be built from a byte budget (joins the benchmark grid).
    source: "scratch" (trained from a fresh init), "trained" (a converter: `from_trained`
    of the trained full model of the same run), or "search" (a search layer that the
    search pipeline trains and prunes to a budget).
    """

    name: str
    cls: type[FeatureEmbedding]
    settings: type
    budgeted: bool
    source: Source

    def parse(self, options: Mapping[str, Any]) -> Any:
        """The method's frozen settings from typed values or `KEY=VALUE` strings; unknown keys are errors."""
        return settings_from(self.settings, options, f"embedding {self.name!r}")


_METHODS: dict[str, MethodInfo] = {}


def register_embedding(name: str, settings: type = NoSettings, budgeted: bool = False, source: Source = "scratch") -> Callable[[T], T]:
    """Class decorator: make a method buildable by name, with its settings dataclass and kind.

    The class needs `from_config(fields, config, settings)` and
    `from_artifact_meta(fields, settings, meta)`; a "trained" method also
    `from_trained(full, settings, budget_bytes)` and `source_dims(fields, config, settings)`.
    """

    def wrap(cls: T) -> T:
        if name in _METHODS:
            raise ValueError(f"embedding method {name!r} registered twice")
        _METHODS[name] = MethodInfo(name, cls, settings, budgeted, source)
        cls.method_name = name
        return cls

    return wrap


def unregister_embedding(name: str) -> None:
    """Remove a method (tests and plugins that register one temporarily)."""
    _METHODS.pop(name, None)


def list_embeddings() -> list[str]:
    return sorted(_METHODS)


def method_info(name: str) -> MethodInfo:
    if name not in _METHODS:
        raise ConfigError(f"unknown embedding method {name!r}; known: {list_embeddings()}")
    return _METHODS[name]


def create_embedding(fields: list[FieldSpec], config: EmbeddingConfig) -> FeatureEmbedding:
    """Build the method `config.method` for these fields.

    A converter ("trained") built this way converts a freshly initialised full table;
    `embslim.train.run` converts the trained one instead.
    """
    info = method_info(config.method)
    settings = info.parse(config.options)
    if info.source == "trained":
        full = _METHODS["full"].cls.from_config(fields, config_for_source(info, fields, config, settings), NoSettings())
        return convert_embedding(full, config)
    return info.cls.from_config(fields, config, settings)


def config_for_source(info: MethodInfo, fields: list[FieldSpec], config: EmbeddingConfig, settings: Any) -> EmbeddingConfig:
    """The full-model config a converter starts from (its widths may be narrower to fit a budget)."""
    dims = info.cls.source_dims(fields, config, settings)
    return EmbeddingConfig("full", max(dims), dict(zip([f.name for f in fields], dims)), None, config.init_std)


def convert_embedding(full: FeatureEmbedding, config: EmbeddingConfig) -> FeatureEmbedding:
    """The converter `config.method` applied to a (trained) full embedding."""
    info = method_info(config.method)
    if info.source != "trained":
        raise ConfigError(f"embedding {info.name!r} is trained from scratch, not converted from a full model")
    return info.cls.from_trained(full, info.parse(config.options), config.budget_bytes)


def load_artifact(path: Path) -> FeatureEmbedding:
    """Rebuild a servable embedding module from an exported artifact."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["embslim"])
    if meta["method"] not in _METHODS:
        raise ConfigError(f"{path}: artifact of unknown method {meta['method']!r}")
    info = _METHODS[meta["method"]]
    module = info.cls.from_artifact_meta(fields_from_meta(meta["fields"]), info.parse(meta["settings"]), meta)
    module.load_artifact_tensors(load_file(str(path)))
    return module
