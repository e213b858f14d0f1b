"""Nested (Matryoshka) embeddings: one table per field whose every prefix is a usable vector.

Training follows MRL (Kusupati et al., NeurIPS 2022): each batch runs the backbone once per
prefix width m of `widths` (every field cut to its first m dimensions, the rest zero, so one
backbone of input width d serves every width) and the loss is the mean of those passes (c_m = 1;
with Adam the sum trains the same way up to epsilon, and the mean keeps the reported loss on the
scale of the other methods). A model built with a budget also trains its own serving widths as
one more pass.

Serving uses `serve_widths`, one prefix width per field: only those columns are counted,
exported and loaded, and the vectors are zero-padded back to d. With a budget the widths are
the largest uniform width that fits, then (allocation "fill", the default) the bytes left
raise the widths of the smallest fields first, one dimension at a time, which gives the
small fields (gender, age, ...) their full width almost for free. The unserved tail columns
and their Adam moments are training-only state (`state_bytes`).

`sliced` re-chooses the widths of a trained table for a smaller budget without retraining:
greedy removal of a field's tail (one dimension, or down to the next trained width) by the
smallest validation-loss increase per byte saved (a measured decrease counts as free, and among
free removals the largest goes first), then single dimensions added back while they fit and
lower the loss. A nested table can serve any prefix per row, so slicing also tries per-frequency-
block widths (MDE's and DNIS's insight: frequent rows wider, rare rows narrower, never the
reverse), chosen the same way on one half of the validation rows and served as a blockwise
table; it is kept when it measures a lower loss on the other half than per-field widths chosen
on the first.

Slicing may also store the kept prefixes at reduced precision, one precision for the whole table
(`SliceContext.precisions`): fp16 values, or row-wise int8/int4 codes with an fp16 scale and bias
per row (the bytes of embslim's int converters). Each reduced precision gets per-field widths chosen
as above at its own bytes, measured on the values as stored, on the first validation half; fp32's
best form and these are compared on the second half. Codes take no gradients, so a fine-tune trains
the fp32 prefixes and the result is stored at the precision afterwards (`QuantizedNestedEmbedding`).
"""
from __future__ import annotations

import heapq
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import ADAM_STATE_COPIES, EmbeddingConfig, FeatureEmbedding, SliceContext, storage_bytes
from embslim.embeddings.blocks import block_starts
from embslim.embeddings.blockwise import BlockwiseEmbedding, BlockwiseSettings, FieldLayout, index_bytes_for, layout_to_json
from embslim.embeddings.full import OFFSET_BYTES, FullEmbedding, full_bytes, uniform_dim_for_budget
from embslim.embeddings.quantized import CAST_METHODS, INT_METHODS, CastSettings, RowwiseSettings, quantized_bytes, stored_values
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

VALUE_BYTES = storage_bytes(1, "fp32")
REFRESH_EVERY = 4  # per-block slicing re-measures every candidate after this many moves
PRECISIONS = ("fp32", "fp16", "int8", "int4")  # what a sliced table may store its prefix values as


def prefix_bytes(fields: list[FieldSpec], widths: list[int], precision: str = "fp32") -> int:
    """Serving bytes of per-field prefixes of these widths stored at `precision` (int: codes plus an fp16
    scale and bias per row, as embslim's int converters store them), with each stored field's offset."""
    return full_bytes(fields, widths) if precision == "fp32" else quantized_bytes(fields, widths, precision)


def check_precisions(precisions: tuple[str, ...]) -> tuple[str, ...]:
    """`precisions` if every one is known and there is at least one, else a one-line ConfigError."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ConfigError(f"slice precisions must be some of {', '.join(PRECISIONS)}, got {', '.join(precisions) or 'none'}")
    return tuple(dict.fromkeys(precisions))


@dataclass(frozen=True)
class NestedSettings:
    """widths: prefix widths trained together (capped at --dim, which is always added);
    reduce: how the passes' losses combine; allocation: how a budget becomes per-field serve widths;
    slice_blocks: frequency blocks per field `embslim slice` may give their own prefix width (1: per field only),
    at most one per `slice_block_rows` rows of the field (a block costs index bytes)."""

    widths: tuple[int, ...] = (1, 2, 4, 8, 16)
    reduce: Literal["mean", "sum"] = "mean"
    allocation: Literal["fill", "uniform"] = "fill"
    slice_blocks: int = 6
    slice_block_rows: int = 100


def train_widths(widths: tuple[int, ...], dim: int) -> list[int]:
    """The trained prefix widths: `widths` capped at `dim`, plus `dim` itself, ascending."""
    if any(w < 1 for w in widths):
        raise ConfigError(f"nested widths must be positive, got {list(widths)}")
    return sorted({min(w, dim) for w in widths} | {dim})


def widths_for_budget(fields: list[FieldSpec], dim: int, budget_bytes: int, allocation: str = "fill") -> list[int]:
    """Per-field serve widths within `budget_bytes`: the largest uniform width (at most `dim`), then with
    "fill" the bytes left go one dimension at a time to the fields with the fewest rows."""
    widths = [min(uniform_dim_for_budget(fields, budget_bytes), dim)] * len(fields)
    if allocation == "uniform":
        return widths
    order = sorted(range(len(fields)), key=lambda i: (fields[i].cardinality, i))
    grown = True
    while grown:
        grown = False
        for i in order:
            if widths[i] < dim and full_bytes(fields, widths) + fields[i].cardinality * VALUE_BYTES <= budget_bytes:
                widths[i] += 1
                grown = True
    return widths


def slice_starts(field: FieldSpec, blocks: int, block_rows: int) -> list[int]:
    """Frequency block starts of a field for slicing: `blocks` equal shares of training occurrences,
    but at most one block per `block_rows` rows (at least one block)."""
    if blocks < 1 or block_rows < 1:
        raise ConfigError(f"nested: slice_blocks and slice_block_rows must be positive, got {blocks} and {block_rows}")
    return block_starts(field, max(1, min(blocks, field.cardinality // block_rows))).tolist()


@register_embedding("nested", settings=NestedSettings, budgeted=True)
class NestedEmbedding(FeatureEmbedding):
    """Per-field tables of `stored` widths (the full d while training; the serve widths once served),
    read through per-field prefixes and zero-padded to d."""

    def __init__(self, fields: list[FieldSpec], dim: int, stored: list[int], serve: list[int],
                 settings: NestedSettings = NestedSettings(), init_std: float = 0.01) -> None:
        super().__init__()
        if any(not 0 <= w <= s <= dim for w, s in zip(serve, stored)) or len(serve) != len(fields) or len(stored) != len(fields):
            raise ConfigError(f"nested: need 0 <= serve width <= stored width <= {dim} per field, got serve {serve}, stored {stored}")
        self.fields, self.width, self.settings = list(fields), int(dim), settings
        self.stored = [int(s) for s in stored]
        self.serve_widths = [int(w) for w in serve]
        self.store = FullEmbedding(fields, self.stored, init_std)
        self._active: list[int] | None = None
        self._row_widths: list[torch.Tensor] | None = None
        self._precision = "fp32"  # what `serving` measures: prefixes as stored at this precision
        self._stored_cache: dict[tuple[str, int, int], torch.Tensor] = {}

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: NestedSettings) -> "NestedEmbedding":
        if config.dims is not None:
            raise ConfigError("embedding 'nested' trains one width (--dim); per-field serve widths come from --budget or `embslim slice`")
        train_widths(settings.widths, config.dim)
        full = [config.dim] * len(fields)
        serve = full if config.budget_bytes is None else widths_for_budget(fields, config.dim, config.budget_bytes, settings.allocation)
        return cls(fields, config.dim, full, serve, settings, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: NestedSettings, meta: dict) -> "FeatureEmbedding":
        """The served nested table; prefixes stored at reduced precision (a slice) load as `QuantizedNestedEmbedding`."""
        if meta.get("precision", "fp32") != "fp32":
            module = QuantizedNestedEmbedding(fields, meta["width"], meta["serve_widths"], meta["precision"])
            module.settings = settings
            return module
        return cls(fields, meta["width"], meta["serve_widths"], meta["serve_widths"], settings)

    def artifact_meta(self) -> dict:
        return {"width": self.width, "serve_widths": list(self.serve_widths)}

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    @property
    def note(self) -> str | None:
        """The served prefix widths, when they differ from the full width (results.json `embedding.note`)."""
        if all(w == self.width for w in self.serve_widths):
            return None
        return "serves prefix widths " + ",".join(f"{f.name}={w}" for f, w in zip(self.fields, self.serve_widths))

    # -- lookups ---------------------------------------------------------------
    def prefix(self, field: int) -> int:
        """Columns of `field` in use now: the training pass's prefix, else the serve width."""
        want = self._active[field] if self._active is not None else self.serve_widths[field]
        return min(want, self.stored[field])

    def _pad(self, field: int, vecs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self._row_widths is not None:
            keep = torch.arange(self.width, device=ids.device) < self._row_widths[field][ids].unsqueeze(-1)
            return F.pad(vecs, (0, self.width - vecs.shape[-1])) * keep
        p = self.prefix(field)
        if vecs.shape[-1] == self.width:
            if p == self.width:
                return vecs
            if not torch.is_grad_enabled():  # a fresh gather of whole rows: zero its tail in place
                vecs[..., p:] = 0.0
                return vecs
            return vecs * (torch.arange(self.width, device=vecs.device) < p).to(vecs.dtype)  # one pass, not a slice and a pad
        return F.pad(vecs[..., :p], (0, self.width - p))

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        if self._precision != "fp32":
            return self._pad(field, F.embedding(ids, self._stored_prefix(field, self.prefix(field))), ids)
        return self._pad(field, self.store.lookup(field, ids), ids)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        if self._precision != "fp32":
            return [self.lookup(f, ids[:, j]) for j, f in enumerate(fields)]
        return [self._pad(f, v, ids[:, j]) for j, (f, v) in enumerate(zip(fields, self.store.lookup_fields(ids, fields)))]

    @torch.no_grad()
    def _stored_prefix(self, field: int, w: int) -> torch.Tensor:
        """The first `w` columns of a field's rows as `self._precision` storage serves them (cached while slicing)."""
        key = (self._precision, field, w)
        if key not in self._stored_cache:
            table, first = self.store.table_of(field) if self.stored[field] else (None, 0)
            rows = self.fields[field].cardinality
            prefix = table[first:first + rows, :w] if w else torch.zeros(rows, 0)
            self._stored_cache[key] = stored_values(prefix, self._precision) if w else prefix
        return self._stored_cache[key]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return self.store.sparse_parameters()

    # -- training --------------------------------------------------------------
    def passes(self) -> list[list[int]]:
        """Per-field prefixes of each training pass: every trained width, then the serve widths if not among them."""
        out: list[list[int]] = []
        for m in train_widths(self.settings.widths, self.width):
            widths = [min(m, s) for s in self.stored]
            if widths not in out:
                out.append(widths)
        if self.serve_widths not in out:
            out.append(list(self.serve_widths))
        return out

    def train_loss(self, task_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """MRL: the task loss of each pass, combined by `reduce`."""
        losses = []
        try:
            for widths in self.passes():
                self._active = widths
                losses.append(task_loss())
        finally:
            self._active = None
        total = torch.stack(losses).sum()
        return total / len(losses) if self.settings.reduce == "mean" else total

    # -- bytes -----------------------------------------------------------------
    def parameter_count(self) -> int:
        return sum(f.cardinality * w for f, w in zip(self.fields, self.serve_widths))

    def weight_bytes(self) -> int:
        return storage_bytes(self.parameter_count(), "fp32")

    def index_bytes(self) -> int:
        return OFFSET_BYTES * sum(w > 0 for w in self.serve_widths)

    def state_bytes(self) -> int:
        """Training-only storage: the unserved tail columns with their two Adam moments, and their offsets."""
        trained = full_bytes(self.fields, self.stored)
        stored_weights = trained - OFFSET_BYTES * sum(s > 0 for s in self.stored)
        return (trained + ADAM_STATE_COPIES * stored_weights) - (1 + ADAM_STATE_COPIES) * self.weight_bytes() - self.index_bytes()

    # -- serving ---------------------------------------------------------------
    @torch.no_grad()
    def served_copy(self, widths: list[int] | None = None) -> "NestedEmbedding":
        """A module storing only the first `widths` (default: the serve widths) columns of each field."""
        widths = list(self.serve_widths if widths is None else widths)
        out = NestedEmbedding(self.fields, self.width, widths, widths, self.settings)
        for i, w in enumerate(widths):
            if w:
                src, first = self.store.table_of(i)
                dst, dfirst = out.store.table_of(i)
                rows = self.fields[i].cardinality
                dst[dfirst:dfirst + rows].copy_(src[first:first + rows, :w])
        return out

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        """Only the served prefix columns (and their offsets)."""
        module = self if self.stored == self.serve_widths else self.served_copy()
        return {k: v.detach().contiguous() for k, v in module.state_dict().items()}

    @contextmanager
    def serving(self, widths: list[int], precision: str = "fp32") -> Iterator[None]:
        """Serve `widths`, stored at `precision`, for the duration of the block (what slicing measures)."""
        saved = self.serve_widths, self._precision
        self.serve_widths, self._precision = list(widths), precision
        try:
            yield
        finally:
            self.serve_widths, self._precision = saved

    @contextmanager
    def serving_blocks(self, starts: list[list[int]], widths: list[list[int]]) -> Iterator[None]:
        """Serve prefix width widths[f][b] to the ids starts[f][b]..starts[f][b+1]-1 of field f for the
        duration of the block (what per-block slicing measures; a blockwise copy serves the same vectors)."""
        saved = self._row_widths
        device = self.store.tables[0].device if len(self.store.tables) else None
        self._row_widths = [torch.repeat_interleave(torch.tensor([min(w, s) for w in ws], device=device),
                                                    torch.tensor(np.diff(st), device=device))
                            for st, ws, s in zip(starts, widths, self.stored)]
        try:
            yield
        finally:
            self._row_widths = saved

    # -- slicing ---------------------------------------------------------------
    def sliced(self, budget_bytes: int, context: SliceContext) -> FeatureEmbedding:
        """A copy within `budget_bytes` at one precision of `context.precisions` for the whole table, tried in
        turn: fp32 as `sliced_fp32` chooses it (per-field or per-block widths), each reduced precision with
        per-field widths chosen at its bytes per value (plus per-row scales for int) on the first half of the
        validation rows; the candidate with the lowest loss on the second half wins (with no halves: on the same
        rows). A budget the trained fp32 table fits keeps it. A reduced-precision winner serves widths re-chosen
        on all the rows at its precision, as a `QuantizedNestedEmbedding`."""
        precisions = check_precisions(tuple(context.precisions))
        self._stored_cache.clear()
        try:
            return self._sliced(budget_bytes, context, precisions)
        finally:
            self._stored_cache.clear()

    def _sliced(self, budget_bytes: int, context: SliceContext, precisions: tuple[str, ...]) -> FeatureEmbedding:
        choose, judge = context.halves or (context.val_loss, context.val_loss)
        trained = [min(w, s) for w, s in zip(self.serve_widths, self.stored)]
        candidates: dict[str, dict] = {}
        fp32 = None
        if "fp32" in precisions:
            fp32, judged = self.sliced_fp32(budget_bytes, context)
            fits = prefix_bytes(self.fields, trained) <= budget_bytes
            if len(precisions) == 1 or fits:
                context.record["precision"] = "fp32"
                return fp32
            if judged is None and context.halves:  # judged as the others are: widths chosen on the first half
                with self.serving(self.choose_widths(budget_bytes, SliceContext(val_loss=choose))):
                    judged = judge(self)
            candidates["fp32"] = {**context.record, "judged_loss": judge(fp32) if judged is None else judged}
            context.record.clear()
        for precision in (p for p in precisions if p != "fp32"):
            sub = SliceContext(val_loss=choose)
            try:
                widths = self.choose_widths(budget_bytes, sub, precision)
            except BudgetError as err:
                candidates[precision] = {"skipped": str(err)}
                continue
            with self.serving(widths, precision):
                candidates[precision] = {**sub.record, "judged_loss": judge(self)}
        ranked = sorted((c["judged_loss"], p) for p, c in candidates.items() if "judged_loss" in c)
        if not ranked:
            raise BudgetError(f"nested: no precision of {', '.join(precisions)} fits the budget of {budget_bytes} bytes")
        best = ranked[0][1]
        judged_on = "second half of the validation rows" if context.halves else "the same rows"
        if best == "fp32":
            context.record.update({**candidates["fp32"], "precision": "fp32", "precisions": candidates, "precision_judged_on": judged_on})
            return fp32
        final = SliceContext(val_loss=context.val_loss)
        widths = self.choose_widths(budget_bytes, final, best)
        context.record.update({"form": "fields", "precision": best, "widths": final.record["widths"], "val_loss": final.record["val_loss"],
                               "fields": final.record, "precisions": candidates, "precision_judged_on": judged_on,
                               "fine_tune": "fp32 prefixes are fine-tuned, then stored at the precision"})
        return QuantizedNestedEmbedding.from_nested(self.served_copy(widths), best)

    def sliced_fp32(self, budget_bytes: int, context: SliceContext) -> tuple[FeatureEmbedding, float | None]:
        """The per-field prefixes `choose_widths` picks for `budget_bytes` (a nested table), or the
        per-frequency-block prefixes of `choose_block_widths` (a blockwise table, whose block index costs
        bytes the per-field form does not pay) when they measure a lower loss. With `context.halves` both
        forms are chosen on the first half of the validation rows and compared on the second (the block
        choice has many more degrees of freedom: judged on the rows it was picked on it would win by fitting
        their noise); the per-field form, when it wins, serves its widths chosen on all the rows. Returns the
        copy and the loss it was judged by against the other form (None when there was no contest)."""
        widths = self.choose_widths(budget_bytes, context)
        by_field = dict(context.record)
        context.record.clear()
        starts = [slice_starts(f, self.settings.slice_blocks, self.settings.slice_block_rows) for f in self.fields]
        blocks = None
        trained = [min(w, s) for w, s in zip(self.serve_widths, self.stored)]
        if widths != trained and any(len(st) > 2 for st in starts):  # a budget the trained table fits keeps it as it is
            choose, judge = context.halves or (context.val_loss, context.val_loss)
            block_context = SliceContext(val_loss=choose)
            blocks = self.choose_block_widths(budget_bytes, block_context, starts)
        if blocks is None:
            context.record.update({"form": "fields", "widths": by_field["widths"], "val_loss": by_field["val_loss"], "fields": by_field})
            return self.served_copy(widths), None
        rival = widths
        if context.halves:  # a fair rival: per-field widths chosen on the same half as the blocks
            rival = self.choose_widths(budget_bytes, SliceContext(val_loss=choose))
        with self.serving(rival):
            by_field["judged_loss"] = judge(self)
        by_field["judged_widths"] = {f.name: w for f, w in zip(self.fields, rival)}
        by_block = {**block_context.record, "judged_loss": judge(self.blockwise_copy(starts, blocks))}
        form, chosen = ("blocks", by_block) if by_block["judged_loss"] < by_field["judged_loss"] else ("fields", by_field)
        context.record.update({"form": form, "widths": chosen["widths"], "val_loss": chosen["val_loss"],
                               "judged_on": "second half of the validation rows" if context.halves else "the same rows",
                               "fields": by_field, "blocks": by_block})
        return (self.blockwise_copy(starts, blocks) if form == "blocks" else self.served_copy(widths)), chosen["judged_loss"]

    @torch.no_grad()
    def blockwise_copy(self, starts: list[list[int]], widths: list[list[int]]) -> BlockwiseEmbedding:
        """A blockwise table holding, for block b of field f, the first widths[f][b] columns of its rows."""
        layouts = {f.name: FieldLayout(list(st), [list(range(min(w, s))) for w in ws])
                   for f, st, ws, s in zip(self.fields, starts, widths, self.stored)}
        module = BlockwiseEmbedding(self.fields, layouts, self.width)
        module.settings = BlockwiseSettings(layout_to_json(layouts, self.width))
        values = []
        for i, (st, ws) in enumerate(zip(starts, widths)):
            table, first = self.store.table_of(i) if self.stored[i] else (None, 0)
            for a, b, w in zip(st[:-1], st[1:], ws):
                w = min(w, self.stored[i])
                values.append(table[first + a:first + b, :w] if w else torch.zeros(b - a, 0))
        module.load_block_values(values)
        return module

    def choose_block_widths(self, budget_bytes: int, context: SliceContext, starts: list[list[int]]) -> list[list[int]] | None:
        """Per-(field, frequency block) prefix widths within `budget_bytes` (blockwise bytes: values plus the
        block index), or None when the block index alone does not fit.

        Greedy removal as in `choose_widths`, where a move lowers one block and every rarer block of its field
        to a width (one dimension less, or the next trained width below), so a frequent block never serves
        fewer dimensions than a rarer one; candidates are ranked by their last measured loss increase per
        byte and re-measured only when picked after another move (lazy greedy). Then single dimensions are
        added back while they fit and lower the loss.
        """
        rows = [np.diff(st).tolist() for st in starts]
        fixed = index_bytes_for([len(r) for r in rows], self.width)
        if fixed > budget_bytes:
            return None
        losses: dict[tuple, float] = {}

        def key(widths: list[list[int]]) -> tuple:
            return tuple(tuple(ws) for ws in widths)

        def loss(widths: list[list[int]]) -> float:
            k = key(widths)
            if k not in losses:
                with self.serving_blocks(starts, widths):
                    losses[k] = context.val_loss(self)
            return losses[k]

        def size(widths: list[list[int]]) -> int:
            return fixed + VALUE_BYTES * sum(r * w for rs, ws in zip(rows, widths) for r, w in zip(rs, ws))

        def with_field(widths: list[list[int]], f: int, ws: list[int]) -> list[list[int]]:
            return [list(ws) if i == f else v for i, v in enumerate(widths)]

        ladder = sorted({0} | set(train_widths(self.settings.widths, self.width)))
        widths = [[min(w, s)] * len(r) for w, s, r in zip(self.serve_widths, self.stored, rows)]
        start = [list(ws) for ws in widths]
        heap: list[tuple] = []
        tick, state, version = 0, 0, [0] * len(widths)

        def push(f: int, ws: list[int]) -> None:
            nonlocal tick
            cand = with_field(widths, f, ws)
            saved = size(widths) - size(cand)
            rate = max(loss(cand) - loss(widths), 0.0) / saved  # a measured decrease is noise: it ranks as free
            heapq.heappush(heap, (rate, -saved, tick, f, ws, state, version[f]))
            tick += 1

        def moves(f: int) -> list[list[int]]:
            out = []
            for b, w in enumerate(widths[f]):
                for lower in ({w - 1, max(l for l in ladder if l < w)} if w > 0 else ()):
                    ws = [min(v, lower) if j >= b else v for j, v in enumerate(widths[f])]
                    if ws not in out:
                        out.append(ws)
            return out

        for f in range(len(widths)):
            for ws in moves(f):
                push(f, ws)
        removed = []
        while size(widths) > budget_bytes:
            rate, _, _, f, ws, seen, ver = heapq.heappop(heap)
            if ver != version[f]:
                continue  # its field has moved since: the move is gone
            if seen != state:
                push(f, ws)
                continue
            removed.append({"field": self.fields[f].name, "to": ws, "loss_per_byte": rate})
            widths = with_field(widths, f, ws)
            state += 1
            # a move can make another field's cheaper (rates are not monotone), so every few moves all are re-measured
            for g in (range(len(widths)) if state % REFRESH_EVERY == 0 else [f]):
                version[g] += 1
                for cand in moves(g):
                    push(g, cand)
        added = []
        while True:
            best = None
            for f, ws in enumerate(widths):
                for b, w in enumerate(ws):
                    if w >= self.stored[f] or (b > 0 and ws[b - 1] <= w):
                        continue
                    cand = with_field(widths, f, [w + 1 if j == b else v for j, v in enumerate(ws)])
                    if size(cand) > budget_bytes:
                        continue
                    gain = (loss(widths) - loss(cand)) / (size(cand) - size(widths))
                    if gain > 0 and (best is None or gain > best[0]):
                        best = (gain, cand, f)
            if best is None:
                break
            added.append({"field": self.fields[best[2]].name, "to": best[1][best[2]], "loss_per_byte": -best[0]})
            widths = best[1]
        context.record.update({"rule": "lazy greedy over frequency blocks: lower a block and its field's rarer blocks (one dimension "
                                       "or to the next trained width) with the least validation-loss increase per byte, then add "
                                       "single dimensions back while they fit and lower the loss",
                               "ladder": ladder, "bytes": size(widths), "index_bytes": fixed, "removed": removed, "added": added,
                               "evaluations": len(losses), "val_loss": loss(widths), "val_loss_full": loss(start),
                               "starts": {f.name: list(st) for f, st in zip(self.fields, starts)},
                               "widths": {f.name: list(ws) for f, ws in zip(self.fields, widths)}})
        return widths

    def choose_widths(self, budget_bytes: int, context: SliceContext, precision: str = "fp32") -> list[int]:
        """Per-field prefix widths within `budget_bytes` with the values stored at `precision` (its bytes per
        value and per-row scales), by validation loss per byte measured on the stored values (see the module docstring)."""
        losses: dict[tuple[int, ...], float] = {}

        def loss(widths: list[int]) -> float:
            key = tuple(widths)
            if key not in losses:
                with self.serving(widths, precision):
                    losses[key] = context.val_loss(self)
            return losses[key]

        def size(widths: list[int]) -> int:
            return prefix_bytes(self.fields, widths, precision)

        widths = [min(w, s) for w, s in zip(self.serve_widths, self.stored)]
        floor = [0] * len(widths)
        if size(floor) > budget_bytes:
            raise BudgetError(f"budget of {budget_bytes} bytes is below an empty nested table ({size(floor)} bytes)")
        ladder = sorted({0} | set(train_widths(self.settings.widths, self.width)))
        removed = []
        while size(widths) > budget_bytes:
            best = None
            for i, w in enumerate(widths):
                for lower in {w - 1, max(l for l in ladder if l < w)} if w > 0 else ():
                    cand = list(widths)
                    cand[i] = lower
                    while cand[i] > 0 and size(cand) == size(widths):  # int4 packs two widths into one byte count
                        cand[i] -= 1
                    saved = size(widths) - size(cand)
                    rate = max(loss(cand) - loss(widths), 0.0) / saved  # a measured decrease is noise: it ranks as free
                    if best is None or (rate, -saved) < best[0]:
                        best = ((rate, -saved), cand, i)
            removed.append({"field": self.fields[best[2]].name, "to": best[1][best[2]], "loss_per_byte": best[0][0]})
            widths = best[1]
        added = []
        while True:
            best = None
            for i, w in enumerate(widths):
                cand = list(widths)
                cand[i] = w + 1
                if w >= self.stored[i] or size(cand) > budget_bytes:
                    continue
                gain = (loss(widths) - loss(cand)) / max(size(cand) - size(widths), 1)  # a dimension packed for free costs one byte
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, cand, i)
            if best is None:
                break
            added.append({"field": self.fields[best[2]].name, "to": best[1][best[2]], "loss_per_byte": -best[0]})
            widths = best[1]
        context.record.update({"rule": "greedy: drop the tail (one dimension or to the next trained width) with the least "
                                       "validation-loss increase per byte, then add single dimensions back while they fit and lower the loss",
                               "precision": precision, "bytes": size(widths),
                               "ladder": ladder, "removed": removed, "added": added, "evaluations": len(losses),
                               "val_loss": loss(widths), "val_loss_full": loss([min(w, s) for w, s in zip(self.serve_widths, self.stored)]),
                               "widths": {f.name: w for f, w in zip(self.fields, widths)}})
        return widths


class QuantizedNestedEmbedding(FeatureEmbedding):
    """A sliced nested table whose per-field prefixes are stored at reduced precision (fp16 values, or row-wise
    int8/int4 codes with an fp16 scale and bias per row, exactly as the `fp16`/`int8`/`int4` converters store
    full tables), read back and zero-padded to the full width like `NestedEmbedding`. Serving only: its codes
    take no gradients, so `embslim slice` fine-tunes `fine_tune_form()` (the fp32 prefixes) and stores the
    result with `requantized`. Artifacts carry method "nested" with a `precision` in their metadata."""

    method_name = "nested"

    def __init__(self, fields: list[FieldSpec], width: int, widths: list[int], precision: str) -> None:
        super().__init__()
        if precision not in PRECISIONS or precision == "fp32":
            raise ConfigError(f"nested: a quantized prefix table stores one of {', '.join(PRECISIONS[1:])}, got {precision!r}")
        if len(widths) != len(fields) or any(not 0 <= w <= width for w in widths):
            raise ConfigError(f"nested: need 0 <= width <= {width} per field, got {list(widths)}")
        self.fields, self.width, self.serve_widths, self.precision = list(fields), int(width), [int(w) for w in widths], precision
        self.settings = NestedSettings()
        kind = {**INT_METHODS, **CAST_METHODS}[precision]
        self.table = kind(self.fields, self.serve_widths, RowwiseSettings() if precision.startswith("int") else CastSettings())
        self._fp32: list[NestedEmbedding] = []  # the fp32 prefixes it was stored from (a list: not a submodule, not exported)

    @classmethod
    @torch.no_grad()
    def from_nested(cls, nested: NestedEmbedding, precision: str) -> "QuantizedNestedEmbedding":
        """The served prefixes of a nested table stored at `precision`."""
        module = cls(nested.fields, nested.width, [min(w, s) for w, s in zip(nested.serve_widths, nested.stored)], precision)
        module.settings = nested.settings
        source = nested if nested.stored == module.serve_widths else nested.served_copy(module.serve_widths)
        converted = type(module.table).from_trained(source.store, module.table.settings, None)
        module.table.load_state_dict(converted.state_dict())
        module._fp32 = [source]
        return module

    def fine_tune_form(self) -> NestedEmbedding:
        """A trainable fp32 table serving the same prefixes, before they were stored at reduced precision."""
        if not self._fp32:
            raise ConfigError("nested: a quantized table loaded from an artifact has no fp32 prefixes to fine-tune")
        return self._fp32[0]

    def requantized(self, nested: NestedEmbedding) -> "QuantizedNestedEmbedding":
        """`nested` (the fine-tuned `fine_tune_form()`) stored at this table's precision."""
        return QuantizedNestedEmbedding.from_nested(nested, self.precision)

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    @property
    def note(self) -> str | None:
        """The precision and served prefix widths (results.json `embedding.note`)."""
        return f"{self.precision} prefixes " + ",".join(f"{f.name}={w}" for f, w in zip(self.fields, self.serve_widths))

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        vecs = self.table.lookup(field, ids)
        return F.pad(vecs, (0, self.width - vecs.shape[-1]))

    def artifact_meta(self) -> dict:
        return {"width": self.width, "serve_widths": list(self.serve_widths), "precision": self.precision}
