"""Plain full-precision tables: one dimension for all fields, per-field dimensions, or a byte budget.

Fields of equal width share one concatenated table (with a row offset per field), so
a batch costs one gather per width group and gradients stay sparse: the fast path
measured in DESIGN.md. With `budget_bytes` the largest uniform dimension whose
serving bytes fit the budget is chosen (the "uniform" baseline).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.registry import register_embedding
from embslim.embeddings.settings import NoSettings
from embslim.errors import BudgetError, ConfigError

OFFSET_BYTES = storage_bytes(1, "int64")


def full_bytes(fields: list[FieldSpec], dims: list[int], kind: str = "fp32") -> int:
    """Serving bytes of full tables with these widths, computed before any tensor exists."""
    values = sum(f.cardinality * d for f, d in zip(fields, dims))
    return storage_bytes(values, kind) + OFFSET_BYTES * sum(d > 0 for d in dims)


def uniform_dim_for_budget(fields: list[FieldSpec], budget_bytes: int) -> int:
    """Largest d with full_bytes(fields, [d]*F) <= budget_bytes (at least 1)."""
    total_rows = sum(f.cardinality for f in fields)
    d = (budget_bytes - OFFSET_BYTES * len(fields)) // storage_bytes(total_rows, "fp32")
    if d < 1:
        raise BudgetError(f"budget of {budget_bytes} bytes is below one dimension for all fields ({full_bytes(fields, [1] * len(fields))} bytes)")
    return int(d)


def dims_from_config(fields: list[FieldSpec], config: EmbeddingConfig) -> list[int]:
    """Per-field widths asked for by `dims` (unnamed fields get `dim`), or `dim` for all."""
    if config.dims is None:
        return [config.dim] * len(fields)
    unknown = sorted(set(config.dims) - {f.name for f in fields})
    if unknown:
        raise ConfigError(f"per-field dims name unknown fields {unknown}")
    return [config.dims.get(f.name, config.dim) for f in fields]


def lookup_by_width_group(module, ids: torch.Tensor, fields: list[int],
                          read: Callable[[int, int, torch.Tensor], Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """`lookup_fields` of a module whose fields share one table per width (`group_dims`, `_place`, `offsets_<d>`):
    per width group, the [B, k] rows of its k fields in one piece, `read(group, width, rows)` giving k [B, d] tensors;
    a field of width 0 reads [B, 0]."""
    out: list[torch.Tensor | None] = [None] * len(fields)
    for g, d in enumerate(module.group_dims):
        cols = [j for j, i in enumerate(fields) if module._place.get(i, (-1,))[0] == g]
        if cols:
            firsts = getattr(module, f"offsets_{d}")[[module._place[fields[j]][1] for j in cols]]
            rows = (ids if len(cols) == ids.shape[1] else ids[:, cols]) + firsts
            for j, vec in zip(cols, read(g, d, rows)):
                out[j] = vec
    return [o if o is not None else ids.new_zeros((ids.shape[0], 0), dtype=torch.float32) for o in out]


@register_embedding("full", budgeted=True)
class FullEmbedding(FeatureEmbedding):
    """Full tables, grouped by width; a width of 0 drops a field (its vector is empty)."""

    def __init__(self, fields: list[FieldSpec], dims: list[int], init_std: float = 0.01) -> None:
        super().__init__()
        if len(dims) != len(fields):
            raise ConfigError(f"need one dimension per field ({len(fields)}), got {len(dims)}")
        self.fields = list(fields)
        self._dims = [int(d) for d in dims]
        self.group_dims = sorted({d for d in self._dims if d > 0})
        self.tables = nn.ParameterList()
        self._members = {d: [i for i, dd in enumerate(self._dims) if dd == d] for d in self.group_dims}
        self._place: dict[int, tuple[int, int]] = {}
        for g, d in enumerate(self.group_dims):
            rows = [fields[i].cardinality for i in self._members[d]]
            self.register_buffer(f"offsets_{d}", torch.tensor(np.r_[0, np.cumsum(rows)[:-1]], dtype=torch.int64))
            self.tables.append(nn.Parameter(torch.randn(sum(rows), d) * init_std))
            self._place.update({i: (g, k) for k, i in enumerate(self._members[d])})
        self.fused_gathers: list[Callable[[torch.Tensor], torch.Tensor]] | None = None  # set by --table-optimizer fbgemm-*

    def __getstate__(self) -> dict:
        """Copies and pickles leave attached fused kernels behind: they train this module's memory, not the copy's."""
        return {**super().__getstate__(), "fused_gathers": None}

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: NoSettings) -> "FullEmbedding":
        if config.budget_bytes is not None:
            return cls(fields, [uniform_dim_for_budget(fields, config.budget_bytes)] * len(fields), config.init_std)
        return cls(fields, dims_from_config(fields, config), config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: NoSettings, meta: dict) -> "FullEmbedding":
        return cls(fields, meta["dims"])

    def artifact_meta(self) -> dict:
        return {"dims": self._dims}

    @property
    def dims(self) -> list[int]:
        return list(self._dims)

    def table_of(self, field: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (shared) table holding a field, and the field's first row in it."""
        g, k = self._place[field]
        return self.tables[g], getattr(self, f"offsets_{self.group_dims[g]}")[k]

    def gather(self, group: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows of width group `group`'s table; while training with fused kernels attached (FBGEMM,
        train/fbgemm_tables.py), through them: their backward updates the table in place."""
        if self.fused_gathers is not None and self.training and torch.is_grad_enabled():
            return self.fused_gathers[group](rows)
        return F.embedding(rows, self.tables[group], sparse=True)

    def gather_columns(self, group: int, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, k] rows of group `group`'s table -> k tensors [B, d], split once (one backward op, not one
        full-size gradient per field); the fused kernels read the rows field by field, so their output is
        split along its first dimension and its gradient arrives contiguous."""
        if self.fused_gathers is not None and self.training and torch.is_grad_enabled():
            return self.fused_gathers[group](rows.t()).unbind(0)
        return F.embedding(rows, self.tables[group], sparse=True).unbind(1)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        if field not in self._place:
            return torch.zeros((*ids.shape, 0), device=ids.device)
        g, k = self._place[field]
        return self.gather(g, ids + getattr(self, f"offsets_{self.group_dims[g]}")[k])

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        """One gather per width group."""
        return lookup_by_width_group(self, ids, fields, lambda g, d, rows: self.gather_columns(g, rows))

    def stacked(self, batch: SparseBatch) -> torch.Tensor | None:
        """One gather of every field at once, where all fields are single-valued at one width (the same rows as
        `lookup_fields`, unsplit); None with fused kernels attached or when a subclass reads rows its own way."""
        if (len(self.group_dims) != 1 or any(f.multivalued for f in self.fields) or self.fused_gathers is not None
                or type(self).lookup_fields is not FullEmbedding.lookup_fields):
            return None
        d = self.group_dims[0]
        if len(self._members[d]) != len(self.fields):
            return None
        return F.embedding(batch.ids + getattr(self, f"offsets_{d}"), self.tables[0], sparse=True)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables)
