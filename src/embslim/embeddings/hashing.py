"""The hashing trick (Weinberger et al., ICML 2009, "Feature Hashing for Large Scale Multitask Learning"):
ids share fewer rows than there are ids, chosen by a salted hash.

Row of (field f, id x) = h(x, salt_f) mod m_f, with a 64-bit multiply-xorshift mix of
the id and a per-field salt derived from `seed`: never a plain modulo, which on
frequency-ranked ids would put every frequent id of a field in the first rows and
collide them in a structured way. `shared=False` (default) gives each field its own
table, m_f rows proportional to its cardinality (a field that fits whole keeps one row
per id, unhashed); `shared=True` hashes every field into one table, as Hetu's
`HashEmbedding` does. Rows are chosen to fill the budget. Serving bytes: the table plus
three int64 per field (salt, modulus, first row), all stored in the artifact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

GOLDEN, MIX = -7046029254386353131, -4658895280553007687  # 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9 as int64
INDEX_PER_FIELD = 3 * storage_bytes(1, "int64")


@dataclass(frozen=True)
class HashSettings:
    """shared: one table for all fields instead of one per field; seed: salts the hash."""

    shared: bool = False
    seed: int = 0


def mix(x: torch.Tensor, salt: torch.Tensor) -> torch.Tensor:
    """A 64-bit multiply-xorshift hash of int64 ids with a salt (wraps modulo 2^64)."""
    x = x * GOLDEN + salt
    x = x ^ (x >> 31)
    x = x * MIX
    return x ^ (x >> 29)


def hash_bytes(fields: list[FieldSpec], rows: int, dim: int) -> int:
    """Serving bytes of `rows` table rows of width dim plus the per-field salt, modulus and first row."""
    return storage_bytes(rows * dim, "fp32") + INDEX_PER_FIELD * len(fields)


def split_rows(cards: list[int], total: int) -> list[int]:
    """Equal rows per field, capped at the field's ids (small fields stay whole and unhashed), summing to at most
    `total` (which must be at least one per field)."""
    rows = [0] * len(cards)
    left = total
    for k, i in enumerate(sorted(range(len(cards)), key=lambda i: cards[i])):
        rows[i] = max(1, min(cards[i], left // (len(cards) - k)))
        left -= rows[i]
    return rows


@register_embedding("hash", settings=HashSettings, budgeted=True)
class HashEmbedding(FeatureEmbedding):
    """Hashed tables of one width: per field (`rows` has one entry per field) or shared (one entry)."""

    def __init__(self, fields: list[FieldSpec], dim: int, rows: list[int], settings: HashSettings, init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.settings = list(fields), dim, settings
        n = len(fields)
        per_field = rows * n if settings.shared else rows
        firsts = [0] * n if settings.shared else [sum(rows[:i]) for i in range(n)]
        self._direct = [not settings.shared and r >= f.cardinality for r, f in zip(per_field, fields)]
        self.register_buffer("salts", mix(torch.arange(1, n + 1, dtype=torch.int64), torch.tensor(settings.seed, dtype=torch.int64)))
        self.register_buffer("moduli", torch.tensor(per_field, dtype=torch.int64))
        self.register_buffer("firsts", torch.tensor(firsts, dtype=torch.int64))
        self.table = nn.Parameter(torch.randn(sum(rows), dim) * init_std)

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: HashSettings) -> "HashEmbedding":
        if config.budget_bytes is None or config.dims is not None:
            raise ConfigError("embedding 'hash' needs a budget (--budget) and one dim")
        total = (config.budget_bytes - INDEX_PER_FIELD * len(fields)) // storage_bytes(config.dim, "fp32")
        cards = [f.cardinality for f in fields]
        if total < (1 if settings.shared else len(fields)):
            raise BudgetError(f"embedding 'hash': budget of {config.budget_bytes} bytes is below one row per table "
                              f"({hash_bytes(fields, 1 if settings.shared else len(fields), config.dim)} bytes)")
        rows = [min(total, sum(cards))] if settings.shared else split_rows(cards, min(total, sum(cards)))
        return cls(fields, config.dim, rows, settings, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: HashSettings, meta: dict) -> "HashEmbedding":
        return cls(fields, meta["dim"], meta["rows"], settings)

    def artifact_meta(self) -> dict:
        rows = self.moduli.tolist()
        return {"dim": self.width, "rows": rows[:1] if self.settings.shared else rows}

    @property
    def accepts_raw_ids(self) -> bool:
        """Raw 64-bit ids hash as well as encoded ones, unless a field is kept whole (indexed by its ids directly)."""
        return not any(self._direct)

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def rows_of(self, ids: torch.Tensor, fields: list[int] | int) -> torch.Tensor:
        """Table rows of ids (last axis, or any shape for one field) of these fields."""
        hashed = mix(ids, self.salts[fields]).remainder(self.moduli[fields])
        if any(self._direct[f] for f in ([fields] if isinstance(fields, int) else fields)):  # else skip a pass over the batch
            hashed = torch.where(torch.tensor(self._direct, device=ids.device)[fields], ids, hashed)
        return hashed + self.firsts[fields]

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.rows_of(ids, field), self.table, sparse=True)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        vecs = F.embedding(self.rows_of(ids, fields), self.table, sparse=True)
        return list(vecs.unbind(1))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table]
