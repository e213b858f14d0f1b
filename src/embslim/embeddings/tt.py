"""Tensor-train tables (Yin et al., MLSys 2021, "TT-Rec: Tensor Train Compression for Deep Learning
Recommendation Model Embeddings"; reference code facebookresearch/FBTT-Embedding).

A field of n ids and width d is three cores G_k of shape r_{k-1} x n_k x d_k x r_k with
n_1 n_2 n_3 >= n, d_1 d_2 d_3 = d and r_0 = r_3 = 1. Id x is written in mixed radix
(i_1, i_2, i_3) and its vector is the contraction G_1[i_1] G_2[i_2] G_3[i_3]. The products
G_1[i_1] G_2[i_2] are formed once per distinct prefix (i_1, i_2) -- for all n_1 n_2 prefixes in one
matmul when a batch has at least that many ids, else for the batch's distinct ones -- so a lookup
gathers d_1 d_2 r + r d_3 values instead of the r^2 d_2 of the middle core (17x faster at r = 40). Both inner ranks of a field are one r: the largest uniform r whose bytes
fit the budget (as Hetu searches it), then the largest fields take r + 1 while the leftover
allows (one rank step moves the bytes by several percent on small data). A field whose full
table is no larger than its cores at its rank stays a plain table (TT saves nothing there). Cores are initialised Gaussian with the std that
gives reconstructed entries the std of a plain table's init (TT-Rec's sampled-Gaussian
init; FBTT's approx-uniform init matches the scale the same way). Core gradients are dense.

Serving bytes = 4 * sum over TT fields of r_f (n_1 d_1 + n_3 d_3) + r_f^2 n_2 d_2, plus the plain
rows of small fields and one int64 first row per plain field.
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
from embslim.embeddings.full import OFFSET_BYTES
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError


@dataclass(frozen=True)
class TTSettings:
    """rank: both inner TT ranks (None: the largest that fits the budget; FBTT's README uses 32)."""

    rank: int | None = None


def row_factors(n: int) -> tuple[int, int, int]:
    """Radices (n_1, n_2, n_3) with product >= n: two of ceil(n^(1/3)), the third what remains."""
    a = max(1, math.ceil(round(n ** (1 / 3), 9)))
    return a, a, max(1, math.ceil(n / (a * a)))


def dim_factors(d: int) -> tuple[int, int, int]:
    """(d_1, d_2, d_3) with product d, as balanced as possible, the smallest in the middle core (whose
    size grows with r^2): 16 -> (2, 2, 4), 64 -> (4, 4, 4), 5 -> (1, 1, 5)."""
    best = min(((a, b, d // (a * b)) for a in range(1, d + 1) if d % a == 0 for b in range(1, d // a + 1) if (d // a) % b == 0),
               key=lambda t: (max(t), -min(t)))
    lo, mid, hi = sorted(best)
    return mid, lo, hi


def core_shapes(n: int, d: int, rank: int) -> list[tuple[int, ...]]:
    """Stored core shapes: G_1 [n_1, d_1, r], G_2 [n_2, r, d_2, r], G_3 [n_3, r, d_3]."""
    (n1, n2, n3), (d1, d2, d3) = row_factors(n), dim_factors(d)
    return [(n1, d1, rank), (n2, rank, d2, rank), (n3, rank, d3)]


def tt_field_bytes(n: int, d: int, rank: int) -> int:
    return storage_bytes(sum(math.prod(s) for s in core_shapes(n, d, rank)), "fp32")


def plain_field_bytes(n: int, d: int) -> int:
    return storage_bytes(n * d, "fp32") + OFFSET_BYTES


def field_rank(n: int, d: int, rank: int) -> int:
    """The rank a field gets: `rank` where its cores are smaller than its plain table, else 0 (plain)."""
    return rank if tt_field_bytes(n, d, rank) < plain_field_bytes(n, d) else 0


def ranks_bytes(fields: list[FieldSpec], dim: int, ranks: list[int]) -> int:
    """Serving bytes of fields at these ranks (0: a plain table)."""
    return sum(tt_field_bytes(f.cardinality, dim, r) if r else plain_field_bytes(f.cardinality, dim) for f, r in zip(fields, ranks))


def tt_layout(fields: list[FieldSpec], dim: int, rank: int) -> tuple[list[int], int]:
    """Per-field ranks at one uniform rank (0 where TT saves nothing) and their total bytes."""
    ranks = [field_rank(f.cardinality, dim, rank) for f in fields]
    return ranks, ranks_bytes(fields, dim, ranks)


def rank_for_budget(fields: list[FieldSpec], dim: int, budget_bytes: int) -> int:
    """Largest rank whose total bytes fit (bytes grow with the rank); stops once no field gains from TT."""
    if tt_layout(fields, dim, 1)[1] > budget_bytes:
        raise BudgetError(f"embedding 'tt': budget of {budget_bytes} bytes is below rank 1 ({tt_layout(fields, dim, 1)[1]} bytes)")
    rank = 1
    while any(tt_layout(fields, dim, rank)[0]) and tt_layout(fields, dim, rank + 1)[1] <= budget_bytes:
        rank += 1
    return rank


def fill_ranks(fields: list[FieldSpec], dim: int, rank: int, budget_bytes: int) -> list[int]:
    """Ranks at the uniform `rank`, then rank + 1 for the largest TT fields, one at a time, while the budget allows."""
    ranks = tt_layout(fields, dim, rank)[0]
    for i in sorted(range(len(fields)), key=lambda i: -fields[i].cardinality):
        bumped = ranks[:i] + [field_rank(fields[i].cardinality, dim, rank + 1)] + ranks[i + 1:]
        if ranks[i] and bumped[i] and ranks_bytes(fields, dim, bumped) <= budget_bytes:
            ranks = bumped
    return ranks


@register_embedding("tt", settings=TTSettings, budgeted=True)
class TTEmbedding(FeatureEmbedding):
    """Three TT cores per large field (`cores` holds them in field order), one plain table for the fields of rank 0."""

    def __init__(self, fields: list[FieldSpec], dim: int, ranks: list[int], settings: TTSettings, init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.settings, self.ranks = list(fields), dim, settings, [int(r) for r in ranks]
        self.cores = nn.ParameterList()
        self._core_index: dict[int, int] = {}
        for i, (f, r) in enumerate(zip(fields, self.ranks)):
            if r:
                core_std = (init_std / r) ** (1 / 3)  # an entry sums r^2 products of three cores: variance r^2 s^6 = init_std^2
                self._core_index[i] = len(self.cores)
                self.cores.extend(nn.Parameter(torch.randn(s) * core_std) for s in core_shapes(f.cardinality, dim, r))
        plain = [f.cardinality for f, r in zip(fields, self.ranks) if not r]
        self._plain_index = {i: k for k, i in enumerate(i for i, r in enumerate(self.ranks) if not r)}
        if plain:
            self.register_buffer("firsts", torch.tensor(np.r_[0, np.cumsum(plain)[:-1]], dtype=torch.int64))
            self.table = nn.Parameter(torch.randn(sum(plain), dim) * init_std)

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: TTSettings) -> "TTEmbedding":
        if config.dims is not None:
            raise ConfigError("embedding 'tt' takes one dim, not per-field dims")
        if settings.rank is None and config.budget_bytes is None:
            raise ConfigError("embedding 'tt' needs a rank (rank=R) or a budget (--budget)")
        if settings.rank is not None and settings.rank < 1:
            raise ConfigError(f"embedding 'tt': rank must be at least 1, got {settings.rank}")
        if settings.rank is None:
            ranks = fill_ranks(fields, config.dim, rank_for_budget(fields, config.dim, config.budget_bytes), config.budget_bytes)
        else:
            ranks = tt_layout(fields, config.dim, settings.rank)[0]
        total = ranks_bytes(fields, config.dim, ranks)
        if config.budget_bytes is not None and total > config.budget_bytes:
            raise BudgetError(f"embedding 'tt': rank {settings.rank} needs {total} bytes, over the budget of {config.budget_bytes}")
        module = cls(fields, config.dim, ranks, settings, config.init_std)
        if not any(ranks):
            module.note = "no field is smaller as TT cores: every table is plain"
        return module

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: TTSettings, meta: dict) -> "TTEmbedding":
        return cls(fields, meta["dim"], meta["ranks"], settings)

    def artifact_meta(self) -> dict:
        return {"dim": self.width, "ranks": self.ranks}

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        if not self.ranks[field]:
            return F.embedding(ids + self.firsts[self._plain_index[field]], self.table, sparse=True)
        k = self._core_index[field]
        g1, g2, g3 = self.cores[k], self.cores[k + 1], self.cores[k + 2]
        n1, n2, n3 = g1.shape[0], g2.shape[0], g3.shape[0]
        flat = ids.reshape(-1)
        prefix, i3 = flat // n3, flat % n3  # prefix = i_1 n_2 + i_2
        r, (d1, d2, d3) = self.ranks[field], (g1.shape[1], g2.shape[2], g3.shape[2])
        if n1 * n2 <= flat.numel():  # every (i_1, i_2) product once, in one matmul, then read per id
            pairs = (g1.reshape(n1 * d1, r) @ g2.permute(1, 0, 2, 3).reshape(r, n2 * d2 * r))
            left = pairs.reshape(n1, d1, n2, d2, r).permute(0, 2, 1, 3, 4).reshape(n1 * n2, d1 * d2, r)[prefix]
        else:  # the distinct prefixes of this batch only
            distinct, inverse = torch.unique(prefix, return_inverse=True)
            left = torch.bmm(g1[distinct // n2], g2[distinct % n2].reshape(-1, r, d2 * r)).reshape(-1, d1 * d2, r)[inverse]
        right = g3.transpose(1, 2).contiguous()[i3].transpose(1, 2)  # [ids, r, d_3] with r innermost: bmm's backward reads it contiguously
        return torch.bmm(left, right).reshape(*ids.shape, d1 * d2 * d3)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table] if hasattr(self, "table") else []
