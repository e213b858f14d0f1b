"""Frequency-based double hashing (Zhang et al., RecSys 2020, "Model Size Reduction Using Frequency Based
Double Hashing for Recommender Systems", arXiv 2007.14523).

Per field, the k most frequent ids get their own rows; every other id is hashed twice, by
two independently salted hashes (`hashing.mix`), into the field's m shared bucket rows,
and the two rows are summed. Two hashes make it unlikely that two cold ids share both
rows, so fewer cold ids are indistinguishable than with one hash into m rows.

The paper's frequency dictionary (raw id -> hot row) is what serving reads to tell hot
from cold. embslim encodes every field to ids ranked by training frequency (id 0 the OOV
bucket, then the most frequent value first; data/vocab.py), an encoding every method
shares and none is charged for. The hot set is therefore `id < k`, and serving reads only
k per field: one stored int64, counted. A deployment that took raw ids without that
encoding would need k int64 keys per field on top.

Rows are filled to the budget: rows per field as the hashing trick splits them (equal,
capped at the field's ids; a field that fits keeps one row per id, unhashed), of which
`hot_fraction` are hot rows and the rest buckets (at least one bucket while cold ids
remain). Bucket rows start at std init_std/sqrt(2), so a summed pair has the hot rows'
scale init_std. Serving bytes: the table plus five int64 per field (first row, k, m, two salts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.hashing import mix, split_rows
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

INDEX_PER_FIELD = 5 * storage_bytes(1, "int64")


@dataclass(frozen=True)
class DoubleHashSettings:
    """hot_fraction: share of each field's rows given to its most frequent ids (the rest are buckets);
    seed: salts the two hashes."""

    hot_fraction: float = 0.5
    seed: int = 0


def split_hot(cards: list[int], rows: list[int], hot_fraction: float) -> tuple[list[int], list[int]]:
    """(hot rows k, bucket rows m) per field: whole fields are all hot; others keep at least one bucket."""
    hot = [n if r >= n else min(int(hot_fraction * r), r - 1) for n, r in zip(cards, rows)]
    return hot, [0 if r >= n else r - k for n, r, k in zip(cards, rows, hot)]


@register_embedding("double-hash", settings=DoubleHashSettings, budgeted=True)
class DoubleHashEmbedding(FeatureEmbedding):
    """One table; field f holds its k_f hot rows, then its m_f bucket rows."""

    def __init__(self, fields: list[FieldSpec], dim: int, hot: list[int], buckets: list[int], settings: DoubleHashSettings,
                 init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.settings = list(fields), dim, settings
        n = len(fields)
        rows = [k + m for k, m in zip(hot, buckets)]
        salts = mix(torch.arange(1, 2 * n + 1, dtype=torch.int64), torch.tensor(settings.seed, dtype=torch.int64))
        self.register_buffer("firsts", torch.tensor([sum(rows[:i]) for i in range(n)], dtype=torch.int64))
        self.register_buffer("hot", torch.tensor(hot, dtype=torch.int64))
        self.register_buffer("buckets", torch.tensor(buckets, dtype=torch.int64))
        self.register_buffer("salts", salts.reshape(n, 2))
        std = torch.cat([torch.full((k, 1), init_std) if j == 0 else torch.full((k, 1), init_std / 2**0.5)
                         for pair in zip(hot, buckets) for j, k in enumerate(pair)])
        self.table = nn.Parameter(torch.randn(sum(rows), dim) * std)

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: DoubleHashSettings) -> "DoubleHashEmbedding":
        if config.budget_bytes is None or config.dims is not None:
            raise ConfigError("embedding 'double-hash' needs a budget (--budget) and one dim")
        if not 0 <= settings.hot_fraction <= 1:
            raise ConfigError(f"embedding 'double-hash': hot_fraction must be within [0, 1], got {settings.hot_fraction}")
        cards = [f.cardinality for f in fields]
        total = (config.budget_bytes - INDEX_PER_FIELD * len(fields)) // storage_bytes(config.dim, "fp32")
        if total < len(fields):
            raise BudgetError(f"embedding 'double-hash': budget of {config.budget_bytes} bytes is below one row per field "
                              f"({storage_bytes(len(fields) * config.dim, 'fp32') + INDEX_PER_FIELD * len(fields)} bytes)")
        hot, buckets = split_hot(cards, split_rows(cards, min(total, sum(cards))), settings.hot_fraction)
        return cls(fields, config.dim, hot, buckets, settings, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: DoubleHashSettings, meta: dict) -> "DoubleHashEmbedding":
        return cls(fields, meta["dim"], meta["hot"], meta["buckets"], settings)

    def artifact_meta(self) -> dict:
        return {"dim": self.width, "hot": self.hot.tolist(), "buckets": self.buckets.tolist()}

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def rows_of(self, ids: torch.Tensor, fields: list[int] | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both table rows of ids (last axis, or any shape for one field) and whether each id is cold.

        A hot id's second row is its own row, masked out by `cold`."""
        hot, first, salts = self.hot[fields], self.firsts[fields], self.salts[fields]
        buckets = self.buckets[fields].clamp(min=1)
        cold = ids >= hot
        rows = [first + torch.where(cold, hot + mix(ids, salts[..., j]).remainder(buckets), ids) for j in (0, 1)]
        return rows[0], rows[1], cold

    def vectors(self, ids: torch.Tensor, fields: list[int] | int) -> torch.Tensor:
        """Hot ids' own rows; cold ids' two bucket rows summed, as one fused bag-sum of both rows weighted 1 and
        `cold`: several times faster than two gathers without gradients, and with them its backward is one sparse
        gradient (two gathers' were summed sparse + sparse: 2x slower forward and backward, measured)."""
        first, second, cold = self.rows_of(ids, fields)
        pairs = torch.stack([first, second], dim=-1)
        weights = torch.stack([torch.ones_like(cold, dtype=self.table.dtype), cold.to(self.table.dtype)], dim=-1)
        summed = F.embedding_bag(pairs.reshape(-1, 2), self.table, mode="sum", per_sample_weights=weights.reshape(-1, 2), sparse=True)
        return summed.view(*ids.shape, self.width)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return self.vectors(ids, field)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        vecs = self.vectors(ids, fields)
        return list(vecs.unbind(1))  # split once: a slice per field would write a full-size gradient each

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table]
