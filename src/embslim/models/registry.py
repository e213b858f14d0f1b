"""Name -> backbone, timm-style: `@register_model`, `create_model`, `list_models`."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

from embslim.data.fields import FeatureTable
from embslim.embeddings.base import FeatureEmbedding
from embslim.errors import ConfigError
from embslim.models.base import ModelOptions, Recommender

_MODELS: dict[str, type[Recommender]] = {}
_TASKS: dict[str, tuple[str, ...]] = {}
T = TypeVar("T", bound=type[Recommender])


def register_model(name: str, tasks: tuple[str, ...] = ("ctr", "rating", "topk")) -> Callable[[T], T]:
    def wrap(cls: T) -> T:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = cls
        _TASKS[name] = tasks
        return cls

    return wrap


def list_models(task: str | None = None) -> list[str]:
    """Registered backbones, or those that support `task`."""
    return sorted(n for n in _MODELS if task is None or task in _TASKS[n])


def model_class(name: str) -> type[Recommender]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {list_models()}")
    return _MODELS[name]


def create_model(name: str, embedding: FeatureEmbedding, options: ModelOptions = ModelOptions(), task: str = "ctr",
                 user_field: str | None = None, item_field: str | None = None, sequences: dict[str, str] | None = None,
                 item_rows: FeatureTable | dict[int, torch.Tensor] | None = None) -> Recommender:
    """Build backbone `name` over `embedding` for `task`; `sequences` maps behaviour sequences to the fields whose tables they read,
    `item_rows` (one row per item id) gives their behaviours the items' side fields."""
    cls = model_class(name)
    if task not in _TASKS[name]:
        raise ConfigError(f"model {name!r} supports tasks {list(_TASKS[name])}, not {task!r}")
    if sequences:
        if not cls.reads_sequences:
            readers = [m for m in list_models() if _MODELS[m].reads_sequences]
            raise ConfigError(f"model {name!r} does not read a behaviour history (--history); models that do: {readers}")
        return cls(embedding, options, user_field=user_field, item_field=item_field, sequences=sequences, item_rows=item_rows)
    return cls(embedding, options, user_field=user_field, item_field=item_field)
