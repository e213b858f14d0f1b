"""The interface every embedding method implements, and exact byte accounting.

A method is built from field specs and an `EmbeddingConfig` (a dimension, per-field
dimensions, or a budget in bytes), maps a `SparseBatch` to one vector per field,
and reports the bytes it needs to serve (`stage="serve"`) or to train
(`stage="train"`: parameters plus Adam's two moment buffers). Byte counts include
every index and offset table that serving needs, not just the weights.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.batch import SparseBatch

Stage = Literal["serve", "train"]
BYTES_PER_ELEMENT = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.int64: 8, torch.int32: 4, torch.int16: 2, torch.int8: 1, torch.uint8: 1}
ADAM_STATE_COPIES = 2


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class EmbeddingConfig:
    """What to build: `method` from the registry and one of dim, per-field dims, or budget_bytes.

    `options` carries method-specific settings; each method rejects keys it does not know.
    """

    method: str = "full"
    dim: int = 16
    dims: dict[str, int] | None = None
    budget_bytes: int | None = None
    init_std: float = 0.01
    options: dict = field(default_factory=dict)


class FeatureEmbedding(nn.Module, ABC):
    """Per-field embedding vectors from sparse ids; the one interface all methods share."""

    fields: list[FieldSpec]

    @property
    @abstractmethod
    def dims(self) -> list[int]:
        """Output width of each field, in field order."""

    @abstractmethod
    def forward(self, batch: SparseBatch) -> list[torch.Tensor]:
        """One [B, dims[i]] tensor per field."""

    @abstractmethod
    def index_bytes(self) -> int:
        """Bytes of the non-trainable structures serving needs (offsets, masks, hash seeds)."""

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive sparse gradients (updated by a sparse optimizer)."""
        return []

    def search_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters trained on validation loss by a search, never by the trainer."""
        return []

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def memory_bytes(self, stage: Stage = "serve") -> int:
        """Exact bytes: parameters and indices; in training also Adam's moment buffers."""
        params = sum(tensor_bytes(p) for p in self.parameters())
        if stage == "train":
            params *= 1 + ADAM_STATE_COPIES
        return params + self.index_bytes()

    def aux_loss(self) -> torch.Tensor | None:
        """A regulariser the trainer adds to the loss (search methods); None for most."""
        return None

    def on_step_end(self, step: int) -> None:
        """Called after each optimiser step (clamping, pruning schedules)."""

    @abstractmethod
    def export(self, path: Path) -> None:
        """Write a compact, servable artifact (safetensors + metadata)."""
