"""Mixed dimensions per frequency block: what DNIS pruning and the MDE rule produce.

Each field's ids are cut into frequency blocks; block s keeps a subset of the K
output dimensions, i.e. a dense [rows_s, kept_s] table. Blocks are stored grouped
by kept width: every (field, block) keeping w columns owns a run of rows of one
shared [rows, w] table, so a batch costs one row gather per width present (as
`full` costs one per width) and the sparse gradients hold whole rows. The w values
of a row are then spread to their columns of a K-wide vector (pruned columns are
zero), so every backbone sees a uniform width and nothing downstream changes.

Serving bytes = kept values + per field its block starts and first block, + per block
its row shift into its width table, kept count and int16 column positions: everything
`forward` reads. The index depends on the blocks alone, so keeping one more (block,
dimension) pair always costs rows * 4 bytes.

The values may be stored at reduced precision (the layout's "precision"): fp16, or row-wise int8
codes with an fp16 scale and bias per stored row (FBGEMM's fused rows, as the `int8` converter
stores them), so a (block, dimension) pair costs rows * 2 or rows * 1 bytes and an int8 block its
rows * 4 bytes of scales once. Training keeps float32 values and reads them through the storage's
rounding (gradients passed straight through), so the trained model is the one served; an artifact
holds the stored form only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import ADAM_STATE_COPIES, EmbeddingConfig, FeatureEmbedding, storage_bytes, tensor_bytes
from embslim.embeddings.quantized import as_stored, fuse_rows, quantize_rows, read_fused_rows
from embslim.embeddings.registry import register_embedding
from embslim.errors import ConfigError

VALUE_BYTES, INDEX_BYTES, COLUMN_BYTES = storage_bytes(1, "fp32"), storage_bytes(1, "int64"), storage_bytes(1, "int16")
PRECISIONS = ("fp32", "fp16", "int8")  # how a blockwise table may store its values


def value_bytes(precision: str = "fp32") -> int:
    """Bytes of one stored value at `precision`."""
    return storage_bytes(1, precision)


def row_overhead_bytes(precision: str = "fp32") -> int:
    """Bytes each stored row pays once at `precision`: int8's fp16 scale and bias, nothing for float storage."""
    return storage_bytes(2, "fp16") if precision == "int8" else 0


def check_precision(precision: str) -> str:
    """`precision` if a blockwise table can store its values so, else a one-line ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"blockwise precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


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


def layout_bytes(layouts: dict[str, FieldLayout], width: int, precision: str = "fp32") -> int:
    """Serving bytes of a blockwise embedding storing its values at `precision`, from its layout alone."""
    values = sum(lay.value_count() for lay in layouts.values())
    rows = sum(r for lay in layouts.values() for r, c in zip(lay.rows(), lay.cols) if c)
    return (values * value_bytes(precision) + rows * row_overhead_bytes(precision)
            + index_bytes_for([len(lay.cols) for lay in layouts.values()], width))


def index_bytes_for(blocks_per_field: list[int], width: int) -> int:
    """Bytes of the block index: per field its block starts (padded to the most blocks of any field) and
    first block; per block its row shift, kept count and int16 column positions."""
    total, most = sum(blocks_per_field), max(blocks_per_field, default=1)
    return len(blocks_per_field) * (most + 1) * INDEX_BYTES + 2 * total * INDEX_BYTES + total * width * COLUMN_BYTES


def layout_to_json(layouts: dict[str, FieldLayout], width: int, precision: str = "fp32") -> dict:
    """The layout as JSON; "precision" is written where the values are not stored as fp32."""
    spec = {"width": width, "fields": {name: {"blocks": [{"rows": [a, b], "dims": cols}
                                                         for a, b, cols in zip(l.starts[:-1], l.starts[1:], l.cols)]}
                                       for name, l in layouts.items()}}
    return {**spec, "precision": precision} if precision != "fp32" else spec


def layout_precision(spec: dict) -> str:
    """How a JSON layout stores its values (fp32 where it does not say)."""
    return check_precision(spec.get("precision", "fp32"))


def layout_from_json(spec: dict) -> tuple[dict[str, FieldLayout], int]:
    layouts = {}
    for name, f in spec["fields"].items():
        blocks = f["blocks"]
        layouts[name] = FieldLayout([b["rows"][0] for b in blocks] + [blocks[-1]["rows"][1]], [list(b["dims"]) for b in blocks])
    return layouts, int(spec["width"])


class _Place(torch.autograd.Function):
    """Rows of each width group written to their columns of one [rows, K] tensor, zeros elsewhere,
    then put back in lookup order (row i is row back[i] of the grouped rows).

    Groups are (first row, width, column index) with their [n, w] values: one write per group
    forward and one slice per group backward, not a padded copy per group plus a concatenation;
    the reordering is a row gather both ways (`order` is the inverse of `back`), where autograd's
    embedding backward would accumulate rows one by one.
    """

    @staticmethod
    def forward(ctx, back: torch.Tensor | None, order: torch.Tensor | None, width: int, spans: list, *vals: torch.Tensor) -> torch.Tensor:
        rows = sum(len(v) for v in vals) if back is None else len(back)
        out = torch.zeros((rows, width), dtype=vals[0].dtype if vals else torch.float32,
                          device=vals[0].device if vals else back.device if back is not None else None)
        for (at, w, cols), v in zip(spans, vals):
            if cols is None:
                out[at:at + len(v), :w] = v
            else:
                padded = F.pad(v, (0, 1))  # column w is the zero every pruned column reads
                out[at:at + len(v)] = padded.index_select(1, cols) if cols.dim() == 1 else padded.gather(1, cols)
        ctx.spans, ctx.sizes, ctx.order = spans, [len(v) for v in vals], order
        return out if back is None else F.embedding(back, out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        grad = grad if ctx.order is None else F.embedding(ctx.order, grad)
        grads = []
        for (at, w, cols), n in zip(ctx.spans, ctx.sizes):
            g = grad[at:at + n]
            if cols is None:
                grads.append(g[:, :w])
            else:
                acc = g.new_zeros((n, w + 1))
                grads.append((acc.index_add_(1, cols, g) if cols.dim() == 1 else acc.scatter_add_(1, cols, g))[:, :w])
        return (None, None, None, None, *grads)


@register_embedding("blockwise", settings=BlockwiseSettings)
class BlockwiseEmbedding(FeatureEmbedding):
    """Per-block kept dimensions, configured by a layout (see `layout_to_json`), one dense table per kept width.

    A batch is a few compares against each field's block starts, a sort of the rows by their
    block's width, one row gather per width group and one reordering gather. A group whose
    blocks all keep the same columns (MDE's prefixes) spreads its rows with a fixed column
    index; otherwise (DNIS) each row gathers its block's column positions.
    """

    def __init__(self, fields: list[FieldSpec], layouts: dict[str, FieldLayout], width: int, init_std: float = 0.01,
                 precision: str = "fp32") -> None:
        super().__init__()
        self.fields, self.width, self.layouts = list(fields), width, layouts
        self.precision = check_precision(precision)
        self._served_codes = False  # True once loaded from an int8 artifact: rows are read from its fused codes
        kept, shift, colpos = [], [], []
        group_rows = [0] * (width + 1)
        group_cols: dict[int, dict[tuple[int, ...], int]] = {}  # width -> {kept columns: first block keeping them}
        most = max((len(layouts[f.name].cols) for f in fields if f.name in layouts), default=1)
        field_starts, first_block = np.zeros((len(fields), most), dtype=np.int64), []
        for i, f in enumerate(fields):
            lay = layouts.get(f.name)
            if lay is None or lay.starts[-1] != f.cardinality or lay.starts[0] != 0:
                raise ConfigError(f"layout for field {f.name!r} must cover ids 0..{f.cardinality}")
            if any(c < 0 or c >= width for cs in lay.cols for c in cs) or any(len(set(c)) != len(c) for c in lay.cols):
                raise ConfigError(f"layout for field {f.name!r}: dims must be distinct and below width {width}")
            field_starts[i] = lay.starts[:-1] + [f.cardinality] * (most - len(lay.cols))  # padding no id reaches
            first_block.append(len(kept))
            for a, b, cols in zip(lay.starts[:-1], lay.starts[1:], lay.cols):
                w = len(cols)
                kept.append(w)
                shift.append(group_rows[w] - a)
                group_rows[w] += b - a
                pos = np.full(width, w, dtype=np.int16)
                pos[list(cols)] = np.arange(w, dtype=np.int16)
                colpos.append(pos)
                if b > a:
                    group_cols.setdefault(w, {}).setdefault(tuple(cols), len(kept) - 1)
        self.register_buffer("block_starts", torch.from_numpy(field_starts))
        self.register_buffer("first_block", torch.tensor(first_block, dtype=torch.int64))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.int64))
        self.register_buffer("kept", torch.tensor(kept, dtype=torch.int64))
        self.register_buffer("colpos", torch.from_numpy(np.stack(colpos) if colpos else np.zeros((0, width), dtype=np.int16)))
        self.group_widths = [w for w in range(1, width + 1) if group_rows[w] > 0]
        self._table_of = {w: g for g, w in enumerate(self.group_widths)}
        self.tables = nn.ParameterList([nn.Parameter(torch.empty(0, w)) for w in self.group_widths])
        self._share_one_storage([(group_rows[w], w) for w in self.group_widths])
        n_values = sum(r * w for w, r in enumerate(group_rows))
        self.load_flat_values(torch.randn(max(n_values, 1))[:n_values] * init_std)  # the draws of the flat storage before
        # How each width group spreads its values: "prefix" (columns 0..w-1), a block whose column
        # positions every block of the group shares, or None (per-row column positions).
        self._spread: dict[int, str | int | None] = {
            w: ("prefix" if list(sets) == [tuple(range(w))] else next(iter(sets.values())) if len(sets) == 1 else None)
            for w, sets in group_cols.items()}
        self._per_row_columns = None in self._spread.values()
        self._all_prefix = all(how == "prefix" for how in self._spread.values())
        self.starts_fit_uint8 = most < 256  # a block number within its field fits the compares' uint8 count
        self.window_lookup = True
        self._joined: torch.Tensor | None = None  # the width tables as one input of a traced program (`use_joined_inputs`)
        self._single_width = self.group_widths[0] if len(self.group_widths) == 1 and group_rows[0] == 0 else None

    @torch.no_grad()
    def _share_one_storage(self, shapes: list[tuple[int, int]] | None = None) -> None:
        """Put the width tables back to back in one flat run of values, in increasing width, each table a view of
        it (values kept). A row's window of the widest kept width W then starts anywhere in one tensor and never
        runs past its end (the widest table comes last): the no-grad lookup reads every row with one gather
        (`_window_lookup`). Always made as normal tensors, even when the first lookup after a move runs under inference mode, so
        the tables can still be trained afterwards. `shapes`: new zero tables of these shapes (construction, no
        second copy of the values); otherwise the current values move over."""
        with torch.inference_mode(False):
            self._lay_out_tables(shapes)

    def _lay_out_tables(self, shapes: list[tuple[int, int]] | None) -> None:
        tables = list(self.tables)
        like = tables[0] if tables else self.kept
        shapes = shapes or [tuple(t.shape) for t in tables]
        sizes = [r * w for r, w in shapes]
        flat = torch.zeros(sum(sizes), dtype=like.dtype if tables else torch.float32, device=like.device)
        offset, at = [0] * (self.width + 1), 0
        for w, t, n, shape in zip(self.group_widths, tables, sizes, shapes):
            if t.shape == shape:
                flat[at:at + n].copy_(t.reshape(-1))
            t.data = flat[at:at + n].view(shape)
            offset[w], at = at, at + n
        self._flat = flat
        self._group_offset = torch.tensor(offset, dtype=torch.int64, device=like.device)

    def _shares_one_storage(self) -> bool:
        """Whether every width table still lives in `_flat` (moving or casting the module, or loading with
        assign=True, gives the tables storage of their own)."""
        ptr = self._flat.untyped_storage().data_ptr()
        return all(t.untyped_storage().data_ptr() == ptr and t.dtype == self._flat.dtype for t in self.tables)

    def _window_lookup(self, ids: torch.Tensor, starts: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The lookup without autograd (serving, evaluation): each id's block by a few compares, then one
        W-wide row gather from the flat values at the row's start (a row of w values followed by whatever
        comes next; W the widest kept width), and the columns past w zeroed by one multiply (prefix layouts) or
        each row's columns picked from its W values and a zero (per-block column sets). Same output as
        `lookup_blocks`. In a traced export the flat values are the program's joined input."""
        if self._joined is not None:
            flat = self._joined
        else:
            if not self._shares_one_storage():
                self._share_one_storage()
            flat = self._flat
        k, window = self.width, self.group_widths[-1]
        block = (ids >= starts.select(-1, 1)).to(torch.uint8) if starts.shape[-1] > 1 else torch.zeros_like(ids, dtype=torch.uint8)
        for s in range(2, starts.shape[-1]):
            block += ids >= starts.select(-1, s)
        block = (first + block).reshape(-1)
        kept = self.kept
        row_start = torch.where(kept > 0, self._group_offset[kept] + self.shift * kept, 0)  # block's row 0, minus its first id's rows
        w = kept[block]
        rows = F.embedding(row_start[block] + ids.reshape(-1) * w, flat.unfold(0, window, 1))
        if self._all_prefix:
            mask = (torch.arange(window, device=w.device) < torch.arange(k + 1, device=w.device)[:, None]).to(rows.dtype)
            rows = rows.mul_(F.embedding(w, mask))
            rows = F.pad(rows, (0, k - window)) if window < k else rows
        else:
            positions = self.colpos.long()
            source = torch.where(positions == kept[:, None], window, positions)  # column w of a row: the zero appended below
            rows = F.pad(rows, (0, 1)).gather(1, F.embedding(block, source))
        return as_stored(rows, self.precision).reshape(*ids.shape, k)

    def _window_ready(self) -> bool:
        """The one-gather lookup applies: no gradient wanted, float values (int8 codes are decoded per row), some
        values kept, and, in a trace, the width tables given as one joined input; off when `window_lookup` is set
        False (what a benchmark does to time the grouped lookup without gradients)."""
        return (self.window_lookup and self.precision != "int8" and not self._served_codes and self.starts_fit_uint8
                and bool(self.group_widths) and (self._joined is not None or not torch.jit.is_tracing())
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in self.tables)))

    def joined_inputs(self) -> list[str]:
        """float32 width tables, in the order of the flat run the window lookup reads (see the base class)."""
        return [f"tables.{i}" for i in range(len(self.tables))] if self.precision == "fp32" and self.group_widths else []

    def use_joined_inputs(self, flat: torch.Tensor | None) -> None:
        self._joined = flat

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: BlockwiseSettings) -> "BlockwiseEmbedding":
        layouts, width = layout_from_json(settings.layout)
        module = cls(fields, layouts, width, config.init_std, layout_precision(settings.layout))
        module.settings = settings
        return module

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: object, meta: dict) -> "BlockwiseEmbedding":
        """Served form of every blockwise method (blockwise, mde): the layout in the metadata."""
        layouts, width = layout_from_json(meta["layout"])
        module = cls(fields, layouts, width, precision=layout_precision(meta["layout"]))
        module.settings = settings
        return module

    def artifact_meta(self) -> dict:
        return {"layout": self.layout_json()}

    def memory_bytes(self, stage: str = "serve") -> int:
        """Serving: the values at the layout's precision (int8: codes plus each row's fp16 scale and bias) and the
        index; training: the float32 values trained through that storage, Adam's moments of them, and the index."""
        if self.precision == "fp32" or self._served_codes:
            return super().memory_bytes(stage)
        masters = sum(tensor_bytes(t) for t in self.tables)
        if stage == "train":
            return masters * (1 + ADAM_STATE_COPIES) + self.index_bytes()
        rows, values = sum(len(t) for t in self.tables), sum(t.numel() for t in self.tables)
        return values * value_bytes(self.precision) + rows * row_overhead_bytes(self.precision) + self.index_bytes()

    def _rows(self, w: int, local: torch.Tensor, sparse: bool = True) -> torch.Tensor:
        """Rows `local` of the width-w table as stored: the int8 artifact's codes decoded, or the trained float32
        values read through the storage's rounding (gradient straight through)."""
        if self._served_codes:
            return read_fused_rows(getattr(self, f"rows_{w}"), local, w, 8, torch.float16)
        return as_stored(F.embedding(local, self.tables[self._table_of[w]], sparse=sparse), self.precision)

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def lookup_blocks(self, ids: torch.Tensor, starts: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Field-local ids [..., k] whose fields have block starts [k, S] and first blocks [k] -> [..., k, width].

        Each width group is one row gather, so the sparse gradient has one row per lookup.
        """
        if self._window_ready():
            return self._window_lookup(ids, starts, first)
        block = first + (ids >= starts.select(-1, 1)) if starts.shape[-1] > 1 else first.expand_as(ids)
        for s in range(2, starts.shape[-1]):
            block = block + (ids >= starts.select(-1, s))  # a few compares beat a binary search of every block
        flat, block = ids.reshape(-1), block.reshape(-1)
        local = flat + self.shift[block]
        if torch.jit.is_tracing():
            return self._traced_lookup(local, block).reshape(*ids.shape, self.width)
        if self._single_width is not None:
            return self._spread_rows(self._single_width, local, block).reshape(*ids.shape, self.width)
        kept = self.kept[block].to(torch.uint8 if self.width < 256 else torch.int16)  # small keys sort several times faster
        order = torch.argsort(kept, stable=True)
        local = local.index_select(0, order)
        block = block.index_select(0, order) if self._per_row_columns else block
        spans, vals, at = [], [], 0
        for w, n in enumerate(torch.bincount(kept, minlength=self.width + 1).tolist()):
            if w and (n or (w in self._table_of and torch.is_grad_enabled())):  # an untouched table still steps (Adam's step count)
                vals.append(self._rows(w, local[at:at + n]))
                spans.append((at, w, self._columns(w, block[at:at + n])))
            at += n
        back = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))
        return _Place.apply(back, order, self.width, spans, *vals).reshape(*ids.shape, self.width)

    def _traced_lookup(self, local: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """The lookup as tensor operations only (what `embslim export` traces): the fast path splits the
        batch by sizes read into Python, which a trace would freeze at the traced batch's counts."""
        kept = self.kept[block]
        stored_floats = self.precision == "fp32" and len(self.tables)  # reduced precision is read back as float32
        out = torch.zeros((local.shape[0], self.width), dtype=self.tables[0].dtype if stored_floats else torch.float32,
                          device=local.device)
        for w in self.group_widths:
            rows = (kept == w).nonzero().squeeze(1)
            padded = F.pad(self._rows(w, local.index_select(0, rows), sparse=False), (0, 1))
            how = self._spread[w]
            if how == "prefix":
                cols = torch.arange(self.width, device=local.device).clamp(max=w)
            else:
                positions = self.colpos.long()
                cols = positions[how] if how is not None else F.embedding(block.index_select(0, rows), positions)
            out.index_put_((rows,), padded.index_select(1, cols) if cols.dim() == 1 else padded.gather(1, cols))
        return out

    def _spread_rows(self, w: int, local: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """Rows `local` of the width-w table, spread to their K columns (zeros elsewhere)."""
        vals = self._rows(w, local)
        return _Place.apply(None, None, self.width, [(0, w, self._columns(w, block))], vals)

    def _columns(self, w: int, block: torch.Tensor) -> torch.Tensor | None:
        """Where each output column of these rows reads (w: the zero): None for columns 0..w-1, one [K]
        index when every block of the group keeps the same columns, else one [rows, K] index."""
        how = self._spread[w]
        if how == "prefix":
            return None
        positions = self.colpos.long()  # [blocks, K]: small, and a row gather of int64 beats indexing int16
        return positions[how] if how is not None else F.embedding(block, positions)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return self.lookup_blocks(ids.unsqueeze(-1), self.block_starts[field:field + 1], self.first_block[field:field + 1]).squeeze(-2)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        return list(self.lookup_blocks(ids, self.block_starts[fields], self.first_block[fields]).unbind(1))

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables)

    def layout_json(self) -> dict:
        return layout_to_json(self.layouts, self.width, self.precision)

    def block_rows(self) -> list[tuple[int, int, int]]:
        """(kept width, first row in that width's table, rows) of every block, in field and block order."""
        out = []
        for f, lay in zip(self.fields, (self.layouts[f.name] for f in self.fields)):
            for a, b, cols in zip(lay.starts[:-1], lay.starts[1:], lay.cols):
                out.append((len(cols), a + int(self.shift[len(out)]), b - a))
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

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        """The index and the values as stored: float32 or fp16 width tables, or int8 fused rows `rows_{w}`."""
        if self._served_codes:
            return super().artifact_tensors()
        if self.precision == "fp32":  # each table on its own: in memory they are views of one run of values
            return {k: v.detach().clone() if k.startswith("tables.") else v.detach().contiguous() for k, v in self.state_dict().items()}
        out = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("tables.")}
        for w, table in zip(self.group_widths, self.tables):
            if self.precision == "fp16":
                out[f"tables.{self._table_of[w]}"] = table.detach().half().contiguous()
            else:
                out[f"rows_{w}"] = fuse_rows(*quantize_rows(table.detach().float().cpu(), 8, torch.float16))
        return out

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load an artifact; one written before width tables (a flat `values` and a column map) loads too. An int8
        artifact is served from its codes (no float32 copy of the values is made)."""
        if "values" in tensors:
            self.load_flat_values(tensors["values"])
        elif self.precision == "int8":
            for w in self.group_widths:
                self.register_buffer(f"rows_{w}", tensors[f"rows_{w}"])
            self.tables = nn.ParameterList()
            self._served_codes = True
            self.load_state_dict(tensors)
        else:
            self.load_state_dict({k: v.float() if k.startswith("tables.") else v for k, v in tensors.items()})

    def load_flat_values(self, flat: torch.Tensor) -> None:
        """Set every block from one flat run of values, block after block, each [rows, kept] row-major."""
        flat, at, blocks = flat.reshape(-1), 0, []
        for w, _, n in self.block_rows():
            blocks.append(flat[at:at + n * w])
            at += n * w
        self.load_block_values(blocks)
