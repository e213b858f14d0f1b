"""Plain full-precision tables: one dimension for all fields, per-field dimensions, or a byte budget.

Fields of equal width share one concatenated table (with a row offset per field), so
a batch costs one gather per width group and gradients stay sparse: the fast path
measured in DESIGN.md. With `budget_bytes` the largest uniform dimension whose
serving bytes fit the budget is chosen (the "uniform" baseline).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import BYTES_PER_ELEMENT, EmbeddingConfig, FeatureEmbedding, tensor_bytes
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

OFFSET_BYTES = BYTES_PER_ELEMENT[torch.int64]


def field_meta(fields: list[FieldSpec]) -> list[dict]:
    return [{"name": f.name, "cardinality": f.cardinality, "multivalued": f.multivalued, "pooling": f.pooling, "side": f.side} for f in fields]


def fields_from_meta(meta: list[dict]) -> list[FieldSpec]:
    return [FieldSpec(counts=np.zeros(m["cardinality"], dtype=np.int64), **m) for m in meta]


def full_bytes(fields: list[FieldSpec], dims: list[int]) -> int:
    """Serving bytes of full tables with these widths, computed before any tensor exists."""
    rows = sum(f.cardinality * d for f, d in zip(fields, dims))
    return rows * BYTES_PER_ELEMENT[torch.float32] + OFFSET_BYTES * sum(d > 0 for d in dims)


def uniform_dim_for_budget(fields: list[FieldSpec], budget_bytes: int) -> int:
    """Largest d with full_bytes(fields, [d]*F) <= budget_bytes (at least 1)."""
    total_rows = sum(f.cardinality for f in fields)
    d = (budget_bytes - OFFSET_BYTES * len(fields)) // (total_rows * BYTES_PER_ELEMENT[torch.float32])
    if d < 1:
        raise BudgetError(f"budget of {budget_bytes} bytes is below one dimension for all fields ({full_bytes(fields, [1] * len(fields))} bytes)")
    return int(d)


@register_embedding("full")
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
        single = [i for i, f in enumerate(fields) if not f.multivalued]
        self._single_col = {i: c for c, i in enumerate(single)}
        for d in self.group_dims:
            members = [i for i, dd in enumerate(self._dims) if dd == d]
            rows = [fields[i].cardinality for i in members]
            self.register_buffer(f"offsets_{d}", torch.tensor(np.r_[0, np.cumsum(rows)[:-1]], dtype=torch.int64))
            self.tables.append(nn.Parameter(torch.randn(sum(rows), d) * init_std))
        self._members = {d: [i for i, dd in enumerate(self._dims) if dd == d] for d in self.group_dims}

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig) -> "FullEmbedding":
        if config.options:
            raise ConfigError(f"embedding 'full' takes no options, got {sorted(config.options)}")
        if config.budget_bytes is not None:
            dims = [uniform_dim_for_budget(fields, config.budget_bytes)] * len(fields)
        elif config.dims is not None:
            unknown = sorted(set(config.dims) - {f.name for f in fields})
            if unknown:
                raise ConfigError(f"per-field dims name unknown fields {unknown}")
            dims = [config.dims.get(f.name, config.dim) for f in fields]
        else:
            dims = [config.dim] * len(fields)
        return cls(fields, dims, config.init_std)

    @property
    def dims(self) -> list[int]:
        return list(self._dims)

    def forward(self, batch: SparseBatch) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self.fields)
        for g, d in enumerate(self.group_dims):
            weight = self.tables[g]
            offsets = getattr(self, f"offsets_{d}")
            members = self._members[d]
            singles = [k for k, i in enumerate(members) if not self.fields[i].multivalued]
            if singles:
                cols = [self._single_col[members[k]] for k in singles]
                ids = batch.ids[:, cols] + offsets[singles]
                vecs = F.embedding(ids, weight, sparse=True)
                for j, k in enumerate(singles):
                    out[members[k]] = vecs[:, j]
            for k, i in enumerate(members):
                f = self.fields[i]
                if f.multivalued:
                    values, bag_offsets = batch.bags[f.name]
                    out[i] = F.embedding_bag(values + offsets[k], weight, bag_offsets[:-1], mode=f.pooling, sparse=True)
        empty = batch.ids.new_zeros((len(batch), 0), dtype=torch.float32)
        return [o if o is not None else empty for o in out]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables)

    def index_bytes(self) -> int:
        return sum(tensor_bytes(b) for b in self.buffers())

    def export(self, path: Path) -> None:
        tensors = {f"table_{d}": self.tables[g].detach().contiguous() for g, d in enumerate(self.group_dims)}
        meta = {"method": self.method_name, "fields": field_meta(self.fields), "dims": self._dims}
        save_file(tensors, str(path), metadata={"embslim": json.dumps(meta)})

    @classmethod
    def from_artifact(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "FullEmbedding":
        module = cls(fields_from_meta(meta["fields"]), meta["dims"])
        with torch.no_grad():
            for g, d in enumerate(module.group_dims):
                module.tables[g].copy_(tensors[f"table_{d}"])
        return module
