"""Unified Embedding, or feature multiplexing (Coleman et al., NeurIPS 2023, "Unified Embedding:
Battle-Tested Feature Representations for Web-Scale ML Systems"): every field shares one table.

The table has B buckets of width c (the chunk). Field f's vector is the concatenation of
k_f = d_f / c lookups; lookup j of field f hashes the id with its own salt, derived from
the pair (f, j), into one of the B buckets, so d_f = k_f * c and fields compete for the
same rows instead of each owning a slice of the budget. As in the reference
(tensorflow/recommenders `UnifiedEmbeddingConfig`) the salt is the (feature, chunk) pair;
its optional split of the buckets over T backend tables is a TPU sharding device and is
left out. `chunk` defaults to the greatest common divisor of the field widths (the one
`dim`: one lookup per field). B fills the budget. Serving bytes: 4·B·c plus one int64
seed, from which every lookup's salt is derived (`lookup_salts`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.full import dims_from_config
from embslim.embeddings.hashing import mix
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

SEED_BYTES = storage_bytes(1, "int64")


@dataclass(frozen=True)
class MultiplexSettings:
    """chunk: width c of one lookup (None: the gcd of the field widths, one lookup per field at one dim); seed: salts the hashes."""

    chunk: int | None = None
    seed: int = 0


def lookup_salts(seed: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Salts of the lookups numbered `keys`, derived from one stored seed, so serving stores only the seed."""
    return mix(keys + 1, seed)


def budget_floats(method: str, budget_bytes: int | None) -> int:
    """fp32 values that fit a budget after the seed; a budget is required and must hold at least one value."""
    if budget_bytes is None:
        raise ConfigError(f"embedding {method!r} needs a budget (--budget)")
    floats = (budget_bytes - SEED_BYTES) // storage_bytes(1, "fp32")
    if floats < 1:
        raise BudgetError(f"embedding {method!r}: budget of {budget_bytes} bytes is below one value and the seed ({SEED_BYTES + 4} bytes)")
    return int(floats)


def positive_dims(method: str, fields: list[FieldSpec], config: EmbeddingConfig) -> list[int]:
    dims = dims_from_config(fields, config)
    if min(dims) < 1:
        raise ConfigError(f"embedding {method!r}: every field needs a width of at least 1, got {dims}")
    return dims


@register_embedding("multiplex", settings=MultiplexSettings, budgeted=True)
class MultiplexEmbedding(FeatureEmbedding):
    """One table [buckets, chunk] for all fields; field f reads dims[f] // chunk salted buckets and concatenates them."""

    def __init__(self, fields: list[FieldSpec], dims: list[int], chunk: int, buckets: int, settings: MultiplexSettings,
                 init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self._dims, self.chunk, self.settings = list(fields), [int(d) for d in dims], chunk, settings
        self.lookups = [d // chunk for d in self._dims]
        self.starts = np.r_[0, np.cumsum(self.lookups)[:-1]].tolist()
        self.register_buffer("seed", torch.tensor(settings.seed, dtype=torch.int64))
        self.table = nn.Parameter(torch.randn(buckets, chunk) * init_std)

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: MultiplexSettings) -> "MultiplexEmbedding":
        dims = positive_dims("multiplex", fields, config)
        chunk = math.gcd(*dims) if settings.chunk is None else settings.chunk
        if chunk < 1 or any(d % chunk for d in dims):
            raise ConfigError(f"embedding 'multiplex': chunk {chunk} must divide every field width {sorted(set(dims))}")
        useful = sum(f.cardinality * d // chunk for f, d in zip(fields, dims))  # more buckets than (field, id, chunk) triples only wastes bytes
        buckets = min(budget_floats("multiplex", config.budget_bytes) // chunk, useful)
        if buckets < 1:
            raise BudgetError(f"embedding 'multiplex': budget of {config.budget_bytes} bytes is below one bucket of {chunk} values "
                              f"({SEED_BYTES + storage_bytes(chunk, 'fp32')} bytes)")
        return cls(fields, dims, chunk, buckets, settings, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: MultiplexSettings, meta: dict) -> "MultiplexEmbedding":
        return cls(fields, meta["dims"], meta["chunk"], meta["buckets"], settings)

    def artifact_meta(self) -> dict:
        return {"dims": self._dims, "chunk": self.chunk, "buckets": self.table.shape[0]}

    @property
    def dims(self) -> list[int]:
        return list(self._dims)

    def buckets_of(self, ids: torch.Tensor, keys: list[int]) -> torch.Tensor:
        """Buckets of ids [..., n] under the lookups `keys` (n of them, or one for all): [..., n]."""
        salts = lookup_salts(self.seed, torch.tensor(keys, device=ids.device))
        return mix(ids, salts).remainder(self.table.shape[0])

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        keys = list(range(self.starts[field], self.starts[field] + self.lookups[field]))
        chunks = F.embedding(self.buckets_of(ids.unsqueeze(-1), keys), self.table, sparse=True)
        return chunks.flatten(-2)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        """Every lookup of every field in one gather."""
        cols = [j for j, f in enumerate(fields) for _ in range(self.lookups[f])]
        keys = [self.starts[f] + k for f in fields for k in range(self.lookups[f])]
        picked = ids if cols == list(range(ids.shape[1])) else ids[:, cols]  # one lookup per field: no copy of the ids
        chunks = F.embedding(self.buckets_of(picked, keys), self.table, sparse=True)
        parts = chunks.split([self.lookups[f] for f in fields], dim=1)  # one backward op, not one full-size gradient per field
        return [part.flatten(1) for part in parts]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table]
