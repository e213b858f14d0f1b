"""Quotient-remainder compositional embeddings (Shi et al., KDD 2020, "Compositional Embeddings Using
Complementary Partitions for Memory-Efficient Recommendation Systems", arXiv 1909.02107).

Id x of a compressed field is served as E_q[x // c] op E_r[x mod c]: two small tables of
ceil(n/c) and c rows instead of n. The pair (x // c, x mod c) is unique for every x < n,
so distinct ids never get the same vector (unlike hashing), while each row is shared
by about n/c (quotient) or c (remainder) ids. `operation` (dlrm's `--qr-operation`):
"mult" (default) or "add" compose rows of width d; "concat" joins a quotient row of
width d - d//2 and a remainder row of width d//2.

Partitions act on the frequency-ranked id itself, not on a salted hash of it: a hash
modulo n is not a bijection and would bring back the collisions QR exists to avoid
(a seeded permutation would keep them away but costs n stored ints or a weaker affine
map). Ranked ids also give a useful structure: the c most frequent ids (x < c) fall
in c distinct remainder rows, so no two of them share their remainder row, and each
quotient row groups ids of similar frequency.

Fields with at most `threshold` rows (dlrm's `--qr-threshold 200`) stay whole. Without
`collisions`, one collision count c for all compressed fields (capped per field at the c
that minimises its rows) is the smallest whose bytes fit the budget, as Hetu's CompoEmb
searches it; a field whose QR tables would not be smaller than its full table stays
whole. Init: the composed vector has the full table's scale init_std (mult: each factor
std sqrt(init_std); add: init_std/sqrt(2) each; concat: init_std), not dlrm's
`uniform_(w, sqrt(1/n))`, which sets only the lower bound and makes the add variant
diverge (facebookresearch/dlrm#326). Serving bytes: the three tables (whole, quotient,
remainder) plus three int64 per field (c, first quotient/whole row, first remainder row).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

Operation = Literal["mult", "add", "concat"]
INDEX_PER_FIELD = 3 * storage_bytes(1, "int64")
DEFAULT_COLLISIONS = 4  # dlrm's --qr-collisions, used when neither collisions nor a budget is given


@dataclass(frozen=True)
class QRSettings:
    """operation: how quotient and remainder rows compose; threshold: fields with at most this many rows stay
    whole; collisions: c for every compressed field (None: the smallest that fits the budget)."""

    operation: Operation = "mult"
    threshold: int = 200
    collisions: int | None = None


def part_widths(dim: int, operation: str) -> tuple[int, int]:
    """Widths of a quotient row and a remainder row."""
    return (dim - dim // 2, dim // 2) if operation == "concat" else (dim, dim)


def field_collisions(cards: list[int], c: int, dim: int, settings: QRSettings) -> list[int]:
    """Each field's collision count at global count c; 0 keeps the field whole (small, or QR would not save)."""
    wq, wr = part_widths(dim, settings.operation)
    out = []
    for n in cards:
        if n <= settings.threshold:
            out.append(0)
            continue
        tries = np.arange(2, max(3, min(c, n) + 1))
        values = -(-n // tries) * wq + tries * wr
        best = int(tries[np.argmin(values)])  # the c' <= c with the fewest values: never more sharing than asked
        out.append(best if values.min() < n * dim else 0)
    return out


def qr_bytes(cards: list[int], collisions: list[int], dim: int, operation: str) -> int:
    """Serving bytes of these fields at these collision counts (0: whole)."""
    wq, wr = part_widths(dim, operation)
    values = sum(n * dim if c == 0 else -(-n // c) * wq + c * wr for n, c in zip(cards, collisions))
    return storage_bytes(values, "fp32") + INDEX_PER_FIELD * len(cards)


def collisions_for(cards: list[int], dim: int, budget_bytes: int | None, settings: QRSettings) -> list[int]:
    """Per-field collision counts: the asked c (checked against the budget), or the smallest c that fits it."""
    if settings.collisions is not None or budget_bytes is None:
        chosen = field_collisions(cards, settings.collisions or DEFAULT_COLLISIONS, dim, settings)
        if budget_bytes is not None and qr_bytes(cards, chosen, dim, settings.operation) > budget_bytes:
            raise BudgetError(f"embedding 'qr': {settings.collisions} collisions need "
                              f"{qr_bytes(cards, chosen, dim, settings.operation)} bytes, over the budget of {budget_bytes}")
        return chosen
    largest = max([int(np.ceil(np.sqrt(n))) + 1 for n in cards] + [2])
    for c in range(2, largest + 1):
        chosen = field_collisions(cards, c, dim, settings)
        if qr_bytes(cards, chosen, dim, settings.operation) <= budget_bytes:
            return chosen
    raise BudgetError(f"embedding 'qr': budget of {budget_bytes} bytes is below the smallest quotient-remainder tables "
                      f"({qr_bytes(cards, chosen, dim, settings.operation)} bytes, fields of <= {settings.threshold} rows whole)")


@register_embedding("qr", settings=QRSettings, budgeted=True)
class QREmbedding(FeatureEmbedding):
    """Whole tables for small fields, quotient and remainder tables for the others, each kind stacked in one tensor."""

    def __init__(self, fields: list[FieldSpec], dim: int, collisions: list[int], settings: QRSettings,
                 init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.settings = list(fields), dim, settings
        self._whole = [c == 0 for c in collisions]
        quotients = [f.cardinality if c == 0 else -(-f.cardinality // c) for f, c in zip(fields, collisions)]
        whole_rows = [q if w else 0 for q, w in zip(quotients, self._whole)]
        quot_rows = [0 if w else q for q, w in zip(quotients, self._whole)]
        firsts = [int(sum(whole_rows[:i]) if w else sum(quot_rows[:i])) for i, w in enumerate(self._whole)]
        self.register_buffer("collisions", torch.tensor(collisions, dtype=torch.int64))
        self.register_buffer("firsts", torch.tensor(firsts, dtype=torch.int64))
        self.register_buffer("rem_firsts", torch.tensor(np.r_[0, np.cumsum(collisions)[:-1]], dtype=torch.int64))
        wq, wr = part_widths(dim, settings.operation)
        std = {"mult": init_std**0.5, "add": init_std / 2**0.5, "concat": init_std}[settings.operation]
        self.whole = nn.Parameter(torch.randn(sum(whole_rows), dim) * init_std)
        self.quotient = nn.Parameter(torch.randn(sum(quot_rows), wq) * std)
        self.remainder = nn.Parameter(torch.randn(sum(collisions), wr) * std)

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: QRSettings) -> "QREmbedding":
        if config.dims is not None:
            raise ConfigError("embedding 'qr' takes one dim, not per-field dims")
        if settings.threshold < 0 or (settings.collisions is not None and settings.collisions < 2):
            raise ConfigError("embedding 'qr': collisions must be at least 2 and threshold at least 0")
        if settings.operation == "concat" and config.dim < 2:
            raise ConfigError("embedding 'qr' with operation=concat needs a dim of at least 2")
        collisions = collisions_for([f.cardinality for f in fields], config.dim, config.budget_bytes, settings)
        return cls(fields, config.dim, collisions, settings, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: QRSettings, meta: dict) -> "QREmbedding":
        return cls(fields, meta["dim"], meta["collisions"], settings)

    def artifact_meta(self) -> dict:
        return {"dim": self.width, "collisions": self.collisions.tolist()}

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def compose(self, ids: torch.Tensor, fields: list[int] | int) -> torch.Tensor:
        """Vectors of ids (last axis, or any shape for one field) of compressed fields."""
        c = self.collisions[fields]
        quotient = ids // c
        q = F.embedding(quotient + self.firsts[fields], self.quotient, sparse=True)
        r = F.embedding(ids - quotient * c + self.rem_firsts[fields], self.remainder, sparse=True)  # one integer division, not two
        if self.settings.operation == "mult":
            return q * r
        if self.settings.operation == "add":
            return q + r
        return torch.cat([q, r], dim=-1)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        if self._whole[field]:
            return F.embedding(ids + self.firsts[field], self.whole, sparse=True)
        return self.compose(ids, field)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        whole = [j for j, f in enumerate(fields) if self._whole[f]]
        split = [j for j, f in enumerate(fields) if not self._whole[f]]
        out: dict[int, torch.Tensor] = {}
        if whole:
            vecs = F.embedding(ids[:, whole] + self.firsts[[fields[j] for j in whole]], self.whole, sparse=True)
            out.update(zip(whole, vecs.unbind(1)))  # split once: a slice per field would write a full-size gradient each
        if split:
            vecs = self.compose(ids[:, split], [fields[j] for j in split])
            out.update(zip(split, vecs.unbind(1)))
        return [out[j] for j in range(len(fields))]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.whole, self.quotient, self.remainder) if p.numel() > 0]
