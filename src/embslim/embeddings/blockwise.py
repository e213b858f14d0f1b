"""Mixed dimensions per frequency block: what DNIS pruning and the MDE rule produce.

Each field's ids are cut into frequency blocks; block s keeps a subset of the K
output dimensions and stores a dense [rows_s, kept_s] table. All blocks of a field
live in one flat parameter, so one gather serves a batch whatever the block mix;
kept values are scattered to their columns of a K-wide vector (pruned columns are
zero), so every backbone sees a uniform width and nothing downstream changes.

Serving bytes = kept values + per-block starts, flat offsets, kept counts and the
int16 column map: everything `forward` reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, tensor_bytes
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.full import field_meta, fields_from_meta
from embslim.embeddings.registry import register_embedding
from embslim.errors import ConfigError

VALUE_BYTES, INDEX_BYTES, COLUMN_BYTES = 4, 8, 2


@dataclass
class FieldLayout:
    """Block starts (S+1 ids) and the kept output columns of each block."""

    starts: list[int]
    cols: list[list[int]]

    def rows(self) -> list[int]:
        return [b - a for a, b in zip(self.starts[:-1], self.starts[1:])]

    def value_count(self) -> int:
        return sum(r * len(c) for r, c in zip(self.rows(), self.cols))


def layout_bytes(layouts: dict[str, FieldLayout], width: int) -> int:
    """Serving bytes of a blockwise embedding, from its layout alone."""
    total = 0
    for lay in layouts.values():
        s = len(lay.cols)
        total += lay.value_count() * VALUE_BYTES + index_bytes_for(s, width)
    return total


def index_bytes_for(blocks: int, width: int) -> int:
    """Bytes of one field's block index: starts, flat offsets, kept counts, column map."""
    return (blocks + 1) * INDEX_BYTES + 2 * blocks * INDEX_BYTES + blocks * width * COLUMN_BYTES


def layout_to_json(layouts: dict[str, FieldLayout], width: int) -> dict:
    return {"width": width, "fields": {name: {"blocks": [{"rows": [a, b], "dims": cols}
                                                         for a, b, cols in zip(l.starts[:-1], l.starts[1:], l.cols)]}
                                       for name, l in layouts.items()}}


def layout_from_json(spec: dict) -> tuple[dict[str, FieldLayout], int]:
    layouts = {}
    for name, f in spec["fields"].items():
        blocks = f["blocks"]
        layouts[name] = FieldLayout([b["rows"][0] for b in blocks] + [blocks[-1]["rows"][1]], [list(b["dims"]) for b in blocks])
    return layouts, int(spec["width"])


@register_embedding("blockwise")
class BlockwiseEmbedding(FeatureEmbedding):
    """Per-block kept dimensions, configured by a layout (see `layout_to_json`)."""

    def __init__(self, fields: list[FieldSpec], layouts: dict[str, FieldLayout], width: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.layouts = list(fields), width, layouts
        self.values = nn.ParameterList()
        for i, f in enumerate(fields):
            lay = layouts.get(f.name)
            if lay is None or lay.starts[-1] != f.cardinality or lay.starts[0] != 0:
                raise ConfigError(f"layout for field {f.name!r} must cover ids 0..{f.cardinality}")
            if any(c < 0 or c >= width for cols in lay.cols for c in cols) or any(len(set(c)) != len(c) for c in lay.cols):
                raise ConfigError(f"layout for field {f.name!r}: dims must be distinct and below width {width}")
            kept = np.array([len(c) for c in lay.cols], dtype=np.int64)
            rows = np.array(lay.rows(), dtype=np.int64)
            colmap = np.full((len(kept), width), width, dtype=np.int16)
            for s, cols in enumerate(lay.cols):
                colmap[s, : len(cols)] = cols
            self.register_buffer(f"starts_{i}", torch.tensor(lay.starts, dtype=torch.int64))
            self.register_buffer(f"bases_{i}", torch.tensor(np.r_[0, np.cumsum(rows * kept)[:-1]], dtype=torch.int64))
            self.register_buffer(f"kept_{i}", torch.from_numpy(kept))
            self.register_buffer(f"colmap_{i}", torch.from_numpy(colmap))
            self.values.append(nn.Parameter(torch.randn(max(int((rows * kept).sum()), 1), 1) * init_std))
        self._single_col = {i: c for c, i in enumerate(i for i, f in enumerate(fields) if not f.multivalued)}

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig) -> "BlockwiseEmbedding":
        unknown = sorted(set(config.options) - {"layout"})
        if unknown or "layout" not in config.options:
            raise ConfigError(f"embedding 'blockwise' needs options {{'layout': ...}} only, got {sorted(config.options)}")
        spec = config.options["layout"]
        if isinstance(spec, (str, Path)):
            spec = json.loads(Path(spec).read_text())
        layouts, width = layout_from_json(spec)
        return cls(fields, layouts, width, config.init_std)

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def lookup(self, i: int, ids: torch.Tensor) -> torch.Tensor:
        """[N] ids of field i -> [N, width] vectors (zeros in pruned columns)."""
        starts, bases = getattr(self, f"starts_{i}"), getattr(self, f"bases_{i}")
        kept, colmap = getattr(self, f"kept_{i}"), getattr(self, f"colmap_{i}")
        block = torch.searchsorted(starts, ids, right=True) - 1
        k = kept[block].unsqueeze(1)
        j = torch.arange(self.width, device=ids.device).unsqueeze(0)
        valid = j < k
        flat = torch.where(valid, bases[block].unsqueeze(1) + (ids - starts[block]).unsqueeze(1) * k + j, 0)
        vals = F.embedding(flat, self.values[i], sparse=True).squeeze(-1) * valid
        out = vals.new_zeros((len(ids), self.width + 1))
        return out.scatter(1, colmap[block].long(), vals)[:, : self.width]

    def forward(self, batch: SparseBatch) -> list[torch.Tensor]:
        out = []
        for i, f in enumerate(self.fields):
            if not f.multivalued:
                out.append(self.lookup(i, batch.ids[:, self._single_col[i]].contiguous()))
                continue
            values, offsets = batch.bags[f.name]
            lengths = offsets[1:] - offsets[:-1]
            rows = torch.repeat_interleave(torch.arange(len(lengths), device=values.device), lengths)
            pooled = torch.zeros(len(lengths), self.width, device=values.device).index_add(0, rows, self.lookup(i, values))
            if f.pooling == "mean":
                pooled = pooled / lengths.clamp(min=1).unsqueeze(1)
            out.append(pooled)
        return out

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.values)

    def parameter_count(self) -> int:
        return sum(lay.value_count() for lay in self.layouts.values())

    def memory_bytes(self, stage: str = "serve") -> int:
        params = self.parameter_count() * VALUE_BYTES
        return params * (3 if stage == "train" else 1) + self.index_bytes()

    def index_bytes(self) -> int:
        return sum(tensor_bytes(b) for b in self.buffers())

    def layout_json(self) -> dict:
        return layout_to_json(self.layouts, self.width)

    def export(self, path: Path) -> None:
        tensors = {f"values_{i}": v.detach().contiguous() for i, v in enumerate(self.values)}
        meta = {"method": self.method_name, "fields": field_meta(self.fields), "layout": self.layout_json()}
        save_file(tensors, str(path), metadata={"embslim": json.dumps(meta)})

    @classmethod
    def from_artifact(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "BlockwiseEmbedding":
        layouts, width = layout_from_json(meta["layout"])
        module = BlockwiseEmbedding(fields_from_meta(meta["fields"]), layouts, width)
        with torch.no_grad():
            for i, v in enumerate(module.values):
                v.copy_(tensors[f"values_{i}"])
        return module
