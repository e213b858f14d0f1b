"""Low-rank tables E_f ~ A_f B_f (A_f: n_f x r, B_f: r x d), trained from scratch or by SVD of a trained table.

`lowrank` trains the factors from a fresh init (the factorised embedding of MLET, Ghaemmaghami
et al., ACML 2023, without its over-parameterised phase). `svd` is a converter: the truncated
SVD of each field's trained full table (Eckart-Young: the best rank-r fit in Frobenius norm),
A_f = U_r S_r and B_f = V_r^T, optionally fine-tuned for `fine_tune_epochs` (post-hoc SVD as in
Hetu's compressors, arXiv 2311.15578, fine-tunes none). Without `rank`, the rank is the largest
that fits the budget; it never exceeds d, so the ceiling is about d times smaller.
Serving bytes = 4 r (sum n_f + F d) + one int64 first row per field.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.full import OFFSET_BYTES, FullEmbedding
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError


@dataclass(frozen=True)
class LowRankSettings:
    """rank: inner dimension r (None: the largest that fits the budget)."""

    rank: int | None = None


@dataclass(frozen=True)
class SVDSettings:
    """rank: as for lowrank; fine_tune_epochs: epochs of training after the conversion (0: none, as post-hoc SVD)."""

    rank: int | None = None
    fine_tune_epochs: int = 0


def lowrank_bytes(fields: list[FieldSpec], rank: int, dim: int) -> int:
    rows = sum(f.cardinality for f in fields)
    return storage_bytes(rank * (rows + len(fields) * dim), "fp32") + OFFSET_BYTES * len(fields)


def rank_for(fields: list[FieldSpec], dim: int, budget_bytes: int | None, rank: int | None) -> int:
    """The asked rank (checked against the budget), or the largest rank <= dim whose bytes fit it."""
    if rank is None and budget_bytes is None:
        raise ConfigError("a low-rank embedding needs a rank (rank=R) or a budget (--budget)")
    if rank is None:
        per_rank = storage_bytes(sum(f.cardinality for f in fields) + len(fields) * dim, "fp32")
        rank = min(dim, (budget_bytes - OFFSET_BYTES * len(fields)) // per_rank)
    if rank < 1 or (budget_bytes is not None and lowrank_bytes(fields, rank, dim) > budget_bytes):
        raise BudgetError(f"budget of {budget_bytes} bytes is below rank {max(rank, 1)} ({lowrank_bytes(fields, max(rank, 1), dim)} bytes)")
    return int(rank)


@register_embedding("lowrank", settings=LowRankSettings, budgeted=True)
class LowRankEmbedding(FeatureEmbedding):
    """Per-field factors: `left` holds every field's A_f stacked (row offsets per field), `right` every B_f."""

    def __init__(self, fields: list[FieldSpec], dim: int, rank: int, settings: LowRankSettings | SVDSettings, init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.rank, self.settings = list(fields), dim, rank, settings
        rows = [f.cardinality for f in fields]
        self.register_buffer("firsts", torch.tensor(np.r_[0, np.cumsum(rows)[:-1]], dtype=torch.int64))
        std = (init_std / rank**0.5) ** 0.5  # the product's entries then have standard deviation init_std
        self.left = nn.Parameter(torch.randn(sum(rows), rank) * std)
        self.right = nn.Parameter(torch.randn(len(fields), rank, dim) * std)

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: LowRankSettings) -> "LowRankEmbedding":
        if config.dims is not None:
            raise ConfigError(f"embedding {cls.method_name!r} takes one dim, not per-field dims")
        return cls(fields, config.dim, rank_for(fields, config.dim, config.budget_bytes, settings.rank), settings, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: LowRankSettings | SVDSettings, meta: dict) -> "LowRankEmbedding":
        return cls(fields, meta["dim"], meta["rank"], settings)

    def artifact_meta(self) -> dict:
        return {"dim": self.width, "rank": self.rank}

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids + self.firsts[field], self.left, sparse=True) @ self.right[field]

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        factors = F.embedding(ids + self.firsts[fields], self.left, sparse=True)
        vecs = torch.einsum("bkr,krd->bkd", factors, self.right[fields])
        return list(vecs.unbind(1))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.left]


@register_embedding("svd", settings=SVDSettings, budgeted=True, source="trained")
class SVDEmbedding(LowRankEmbedding):
    """Truncated SVD of each field's trained full table."""

    @classmethod
    def source_dims(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: SVDSettings) -> list[int]:
        if config.dims is not None:
            raise ConfigError("embedding 'svd' takes one dim, not per-field dims")
        rank_for(fields, config.dim, config.budget_bytes, settings.rank)
        return [config.dim] * len(fields)

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: SVDSettings) -> "SVDEmbedding":
        raise ConfigError("embedding 'svd' is converted from a trained full model (use create_embedding or embslim train)")

    @classmethod
    @torch.no_grad()
    def from_trained(cls, full: FullEmbedding, settings: SVDSettings, budget_bytes: int | None) -> "SVDEmbedding":
        if len(full.group_dims) != 1 or 0 in full.dims:
            raise ConfigError("embedding 'svd' converts a full model of one width for all fields")
        dim = full.group_dims[0]
        rank = rank_for(full.fields, dim, budget_bytes, settings.rank)
        module = cls(full.fields, dim, rank, settings)
        for i, f in enumerate(full.fields):
            table, first = full.table_of(i)
            u, s, vh = torch.linalg.svd(table[first:first + f.cardinality].detach().float(), full_matrices=False)
            r = min(rank, len(s))
            module.left[first:first + f.cardinality] = 0
            module.left[first:first + f.cardinality, :r] = u[:, :r] * s[:r]
            module.right[i] = 0
            module.right[i, :r] = vh[:r]
        return module
