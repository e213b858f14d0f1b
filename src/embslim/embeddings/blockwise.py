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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.registry import register_embedding
from embslim.errors import ConfigError

VALUE_BYTES, INDEX_BYTES, COLUMN_BYTES = storage_bytes(1, "fp32"), storage_bytes(1, "int64"), storage_bytes(1, "int16")


@dataclass(frozen=True)
class BlockwiseSettings:
    """layout: a mapping in the shape of `layout_to_json`, or the path of a JSON file holding one."""

    layout: dict


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
    values = sum(lay.value_count() for lay in layouts.values())
    return values * VALUE_BYTES + index_bytes_for([len(lay.cols) for lay in layouts.values()], width)


def index_bytes_for(blocks_per_field: list[int], width: int) -> int:
    """Bytes of the block index: global block starts, flat offsets, kept counts, column map, field offsets."""
    total = sum(blocks_per_field)
    return (total + 1) * INDEX_BYTES + 2 * total * INDEX_BYTES + total * width * COLUMN_BYTES + len(blocks_per_field) * INDEX_BYTES


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


@register_embedding("blockwise", settings=BlockwiseSettings)
class BlockwiseEmbedding(FeatureEmbedding):
    """Per-block kept dimensions, configured by a layout (see `layout_to_json`).

    All fields share one flat value parameter and one global block index, so a batch
    of single-valued fields is one searchsorted, one gather and one scatter.
    """

    def __init__(self, fields: list[FieldSpec], layouts: dict[str, FieldLayout], width: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.layouts = list(fields), width, layouts
        starts, kept, rows, cols = [], [], [], []
        row_offset = 0
        for f in fields:
            lay = layouts.get(f.name)
            if lay is None or lay.starts[-1] != f.cardinality or lay.starts[0] != 0:
                raise ConfigError(f"layout for field {f.name!r} must cover ids 0..{f.cardinality}")
            if any(c < 0 or c >= width for cs in lay.cols for c in cs) or any(len(set(c)) != len(c) for c in lay.cols):
                raise ConfigError(f"layout for field {f.name!r}: dims must be distinct and below width {width}")
            starts += [row_offset + a for a in lay.starts[:-1]]
            kept += [len(c) for c in lay.cols]
            rows += lay.rows()
            cols += lay.cols
            row_offset += f.cardinality
        kept_a, rows_a = np.array(kept, dtype=np.int64), np.array(rows, dtype=np.int64)
        colmap = np.full((len(kept), width), width, dtype=np.int16)
        for b, c in enumerate(cols):
            colmap[b, : len(c)] = c
        self.register_buffer("field_offsets", torch.tensor(np.r_[0, np.cumsum([f.cardinality for f in fields])[:-1]], dtype=torch.int64))
        self.register_buffer("starts", torch.tensor(starts + [row_offset], dtype=torch.int64))
        self.register_buffer("bases", torch.tensor(np.r_[0, np.cumsum(rows_a * kept_a)[:-1]], dtype=torch.int64))
        self.register_buffer("kept", torch.from_numpy(kept_a))
        self.register_buffer("colmap", torch.from_numpy(colmap))
        self.n_values = int((rows_a * kept_a).sum())
        self.values = nn.Parameter(torch.randn(max(self.n_values, 1), 1) * init_std)

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: BlockwiseSettings) -> "BlockwiseEmbedding":
        layouts, width = layout_from_json(settings.layout)
        module = cls(fields, layouts, width, config.init_std)
        module.settings = settings
        return module

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: object, meta: dict) -> "BlockwiseEmbedding":
        """Served form of every blockwise method (blockwise, mde): the layout in the metadata."""
        layouts, width = layout_from_json(meta["layout"])
        module = cls(fields, layouts, width)
        module.settings = settings
        return module

    def artifact_meta(self) -> dict:
        return {"layout": self.layout_json()}

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def lookup_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Global rows (field offset + id), any shape -> [..., width] vectors, zeros in pruned columns.

        Only kept entries are gathered, so the sparse gradient has one entry per kept value used.
        """
        flat_rows = rows.reshape(-1).contiguous()
        block = torch.searchsorted(self.starts, flat_rows, right=True) - 1
        valid = torch.arange(self.width, device=rows.device) < self.kept[block].unsqueeze(1)
        which, j = valid.nonzero(as_tuple=True)
        b = block[which]
        index = self.bases[b] + (flat_rows[which] - self.starts[b]) * self.kept[b] + j
        vals = F.embedding(index, self.values, sparse=True).squeeze(1)
        out = vals.new_zeros((len(flat_rows), self.width)).index_put((which, self.colmap[b, j].long()), vals)
        return out.reshape(*rows.shape, self.width)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return self.lookup_rows(ids + self.field_offsets[field])

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        vecs = self.lookup_rows(ids + self.field_offsets[fields])
        return list(vecs.unbind(1))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.values]

    def parameter_count(self) -> int:
        return self.n_values

    def weight_bytes(self) -> int:
        return self.n_values * VALUE_BYTES

    def layout_json(self) -> dict:
        return layout_to_json(self.layouts, self.width)

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().artifact_tensors(), "values": self.values.detach()[: self.n_values].contiguous()}

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.values[: self.n_values].copy_(tensors["values"])
        self.load_state_dict({k: v for k, v in tensors.items() if k != "values"}, strict=False)
