"""Mixed dimensions per frequency block: what DNIS pruning and the MDE rule produce.

Each field's ids are cut into frequency blocks; block s keeps a subset of the K
output dimensions, i.e. a dense [rows_s, kept_s] table. Blocks are stored grouped
by kept width: every (field, block) keeping w columns owns a run of rows of one
shared [rows, w] table, so a batch costs one row gather per width present (as
`full` costs one per width) and the sparse gradients hold whole rows. The w values
of a row are then spread to their columns of a K-wide vector (pruned columns are
zero), so every backbone sees a uniform width and nothing downstream changes.

Serving bytes = kept values + per block its start, row shift into its width table,
kept count and int16 column positions, + field offsets: everything `forward` reads.
The byte count depends on the layout only through values and block count, so the
cost of keeping one more (block, dimension) pair is always rows * 4 bytes.
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
    """Bytes of the block index: global block starts, row shifts, kept counts, column positions, field offsets."""
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
    """Per-block kept dimensions, configured by a layout (see `layout_to_json`), one dense table per kept width.

    A batch is one searchsorted over the global block starts, a sort of the rows by their
    block's width, one row gather per width group and one reordering copy. A group whose
    blocks all keep the same columns (MDE's prefixes) spreads its rows with a fixed column
    index; otherwise (DNIS) each row gathers its block's column positions.
    """

    def __init__(self, fields: list[FieldSpec], layouts: dict[str, FieldLayout], width: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.layouts = list(fields), width, layouts
        starts, kept, shift, colpos = [], [], [], []
        group_rows = [0] * (width + 1)
        group_cols: dict[int, dict[tuple[int, ...], int]] = {}  # width -> {kept columns: first block keeping them}
        row_offset = 0
        for f in fields:
            lay = layouts.get(f.name)
            if lay is None or lay.starts[-1] != f.cardinality or lay.starts[0] != 0:
                raise ConfigError(f"layout for field {f.name!r} must cover ids 0..{f.cardinality}")
            if any(c < 0 or c >= width for cs in lay.cols for c in cs) or any(len(set(c)) != len(c) for c in lay.cols):
                raise ConfigError(f"layout for field {f.name!r}: dims must be distinct and below width {width}")
            for a, b, cols in zip(lay.starts[:-1], lay.starts[1:], lay.cols):
                w = len(cols)
                starts.append(row_offset + a)
                kept.append(w)
                shift.append(group_rows[w] - (row_offset + a))
                group_rows[w] += b - a
                pos = np.full(width, w, dtype=np.int16)
                pos[list(cols)] = np.arange(w, dtype=np.int16)
                colpos.append(pos)
                if b > a:
                    group_cols.setdefault(w, {}).setdefault(tuple(cols), len(starts) - 1)
            row_offset += f.cardinality
        self.register_buffer("field_offsets", torch.tensor(np.r_[0, np.cumsum([f.cardinality for f in fields])[:-1]], dtype=torch.int64))
        self.register_buffer("starts", torch.tensor(starts + [row_offset], dtype=torch.int64))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.int64))
        self.register_buffer("kept", torch.tensor(kept, dtype=torch.int64))
        self.register_buffer("colpos", torch.from_numpy(np.stack(colpos) if colpos else np.zeros((0, width), dtype=np.int16)))
        self.group_widths = [w for w in range(1, width + 1) if group_rows[w] > 0]
        self._table_of = {w: g for g, w in enumerate(self.group_widths)}
        self.tables = nn.ParameterList([nn.Parameter(torch.empty(group_rows[w], w)) for w in self.group_widths])
        n_values = sum(r * w for w, r in enumerate(group_rows))
        self.load_flat_values(torch.randn(max(n_values, 1))[:n_values] * init_std)  # the draws of the flat storage before
        # How each width group spreads its values: "prefix" (columns 0..w-1), a block whose column
        # positions every block of the group shares, or None (per-row column positions).
        self._spread: dict[int, str | int | None] = {
            w: ("prefix" if list(sets) == [tuple(range(w))] else next(iter(sets.values())) if len(sets) == 1 else None)
            for w, sets in group_cols.items()}
        self._single_width = self.group_widths[0] if len(self.group_widths) == 1 and group_rows[0] == 0 else None

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

        Each width group is one row gather, so the sparse gradient has one row per lookup.
        """
        flat = rows.reshape(-1)
        block = torch.searchsorted(self.starts, flat, right=True) - 1
        local = flat + self.shift[block]
        if self._single_width is not None:
            return self._spread_rows(self._single_width, local, block).reshape(*rows.shape, self.width)
        kept = self.kept[block]
        order = torch.argsort(kept, stable=True)
        parts, at = [], 0
        for w, n in enumerate(torch.bincount(kept, minlength=self.width + 1).tolist()):
            if n or (w in self._table_of and torch.is_grad_enabled()):  # an untouched table still steps (Adam's step count)
                idx = order[at:at + n]
                parts.append(self._spread_rows(w, local[idx], block[idx]) if w else flat.new_zeros((n, self.width), dtype=torch.float32))
                at += n
        ordered = torch.cat(parts) if len(parts) > 1 else parts[0]
        out = ordered.new_empty((len(flat), self.width)).index_copy_(0, order, ordered)
        return out.reshape(*rows.shape, self.width)

    def _spread_rows(self, w: int, local: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """Rows `local` of the width-w table, spread to their K columns (zeros elsewhere)."""
        vals = F.embedding(local, self.tables[self._table_of[w]], sparse=True)
        how = self._spread[w]
        if how == "prefix":
            return F.pad(vals, (0, self.width - w))
        padded = F.pad(vals, (0, 1))  # column w is the zero every pruned column reads
        if how is None:
            return padded.gather(1, self.colpos[block].long())
        return padded.index_select(1, self.colpos[how].long())

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return self.lookup_rows(ids + self.field_offsets[field])

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        vecs = self.lookup_rows(ids + self.field_offsets[fields])
        return list(vecs.unbind(1))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables)

    def layout_json(self) -> dict:
        return layout_to_json(self.layouts, self.width)

    def block_rows(self) -> list[tuple[int, int, int]]:
        """(kept width, first row in that width's table, rows) of every block, in field and block order."""
        out = []
        for start, end, shift, w in zip(self.starts[:-1].tolist(), self.starts[1:].tolist(), self.shift.tolist(), self.kept.tolist()):
            out.append((w, start + shift, end - start))
        return out

    @torch.no_grad()
    def load_block_values(self, blocks: list[torch.Tensor]) -> None:
        """Set the values of every block from [rows_s, kept_s] tensors in field and block order
        (columns in the layout's order): how searched values warm-start the pruned tables."""
        spans = self.block_rows()
        if len(blocks) != len(spans):
            raise ConfigError(f"need the values of {len(spans)} blocks, got {len(blocks)}")
        for (w, first, n), vals in zip(spans, blocks):
            if w and n:
                self.tables[self._table_of[w]][first:first + n].copy_(vals.reshape(n, w))

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load an artifact; one written before width tables (a flat `values` and a column map) loads too."""
        if "values" in tensors:
            self.load_flat_values(tensors["values"])
        else:
            self.load_state_dict(tensors)

    def load_flat_values(self, flat: torch.Tensor) -> None:
        """Set every block from one flat run of values, block after block, each [rows, kept] row-major."""
        flat, at, blocks = flat.reshape(-1), 0, []
        for w, _, n in self.block_rows():
            blocks.append(flat[at:at + n * w])
            at += n * w
        self.load_block_values(blocks)
