"""Post-training reduced precision of a trained full table: row-wise int8/int4/int2, and fp16/bf16 storage.

int8/int4/int2 (Guan et al. 2019, "Post-Training 4-bit Quantization on Embedding Tables",
arXiv 1911.02079; FBGEMM's fused row-wise layout, pytorch/FBGEMM #616/#619): each row is
stored as b-bit codes plus a per-row scale and bias in fp16 (bf16 as a setting, FBGEMM
#5595), min/max uniform quantisation; 8/b codes share a byte, so a row costs
ceil(d*b/8) + 4 bytes. fp16/bf16 cast every value (2 bytes). These are converters:
`from_trained` quantises the full model trained in the same run; they are not trained
further (no gradients through integer codes).

At d=16 the natural ratios are fp16 2x, int8 3.2x, int4 5.3x, int2 8x. Asked for fewer
bytes, a method keeps its precision and takes the widest uniform width whose rows fit;
the run then trains the full model *at that width* and converts it, rather than
truncating a wider trained table (the first d' columns of a trained table are not a
d'-dim model). `note` says which case applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import BITS, DTYPE_NAMES, EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.full import OFFSET_BYTES, FullEmbedding, dims_from_config, lookup_by_width_group
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class RowwiseSettings:
    """scale_bias: storage of each row's scale and bias (FBGEMM's default fp16; bf16 avoids fp16's range limits)."""

    scale_bias: Literal["fp16", "bf16"] = "fp16"


@dataclass(frozen=True)
class CastSettings:
    """Reduced-precision storage has nothing to set."""


def row_bytes(dim: int, kind: str, scale_bias: str = "fp16") -> int:
    """Bytes of one stored row of `dim` values: packed codes plus scale and bias, or cast values."""
    if kind.startswith("int"):
        return storage_bytes(dim, kind) + storage_bytes(2, scale_bias)
    return storage_bytes(dim, kind)


def quantized_bytes(fields: list[FieldSpec], dims: list[int], kind: str, scale_bias: str = "fp16") -> int:
    """Serving bytes at these widths, before any tensor exists (rows, plus each stored field's first row)."""
    rows = sum(f.cardinality * row_bytes(d, kind, scale_bias) for f, d in zip(fields, dims) if d > 0)
    return rows + OFFSET_BYTES * sum(d > 0 for d in dims)


def quantize_rows(weight: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, d] floats -> packed uint8 codes [n, ceil(d*bits/8)] and (scale, bias) [n, 2] per row."""
    levels = 2**bits - 1
    lo, hi = weight.min(dim=1).values, weight.max(dim=1).values
    scale_bias = torch.stack([(hi - lo) / levels, lo], dim=1).to(scale_dtype)
    scale, bias = scale_bias.float().unbind(1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((weight - bias[:, None]) / safe[:, None]).clamp(0, levels).long()
    per = 8 // bits
    codes = torch.nn.functional.pad(codes, (0, -weight.shape[1] % per)).view(len(weight), -1, per)
    packed = (codes << (torch.arange(per) * bits)).sum(-1).to(torch.uint8)
    return packed, scale_bias


def take_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """table[rows] for rows of any shape, as one `index_select` (advanced indexing of small-dtype tables measured
    ~10x slower for a [4096, 26] batch of rows)."""
    return table.index_select(0, rows.reshape(-1)).view(*rows.shape, *table.shape[1:])


def dequantize_rows(packed: torch.Tensor, scale_bias: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    """Inverse of `quantize_rows` for gathered rows of any leading shape -> [..., dim] float32."""
    if bits == 8:
        codes = packed[..., :dim].float()  # one code per byte: nothing to unpack
    else:  # shifts on the uint8 codes themselves (a widening to int64 first cost a pass at 8x the bytes)
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        codes = ((packed.unsqueeze(-1) >> shifts) & (2**bits - 1)).flatten(-2)[..., :dim].float()
    scale, bias = scale_bias.float().unbind(-1)
    return codes * scale.unsqueeze(-1) + bias.unsqueeze(-1)


def stored_values(weight: torch.Tensor, kind: str, scale_bias: str = "fp16") -> torch.Tensor:
    """[n, d] floats as a `kind` table serves them after storing: cast for fp16/bf16, row-wise codes for
    int8/int4/int2 read back (the same values `quantize_rows` then `dequantize_rows` give), unchanged for fp32."""
    if kind == "fp32":
        return weight.float()
    if kind.startswith("int"):
        codes, sb = quantize_rows(weight.detach().float().cpu(), BITS[kind], TORCH_DTYPES[scale_bias])
        return dequantize_rows(codes, sb, weight.shape[1], BITS[kind]).to(weight.device)
    return weight.to(TORCH_DTYPES[kind]).float()


class ReducedPrecisionEmbedding(FeatureEmbedding):
    """Full tables stored at `kind` precision, grouped by width like `FullEmbedding`; serving only."""

    KIND = "fp16"

    def __init__(self, fields: list[FieldSpec], dims: list[int], settings: RowwiseSettings | CastSettings) -> None:
        super().__init__()
        self.fields, self._dims, self.settings = list(fields), [int(d) for d in dims], settings
        self.group_dims = sorted({d for d in self._dims if d > 0})
        self._place: dict[int, tuple[int, int]] = {}
        quantized = self.KIND.startswith("int")
        for g, d in enumerate(self.group_dims):
            members = [i for i, dd in enumerate(self._dims) if dd == d]
            rows = [fields[i].cardinality for i in members]
            self.register_buffer(f"offsets_{d}", torch.tensor(np.r_[0, np.cumsum(rows)[:-1]], dtype=torch.int64))
            if quantized:
                self.register_buffer(f"codes_{d}", torch.zeros(sum(rows), storage_bytes(d, self.KIND), dtype=torch.uint8))
                self.register_buffer(f"scale_bias_{d}", torch.zeros(sum(rows), 2, dtype=TORCH_DTYPES[settings.scale_bias]))
            else:
                self.register_buffer(f"values_{d}", torch.zeros(sum(rows), d, dtype=TORCH_DTYPES[self.KIND]))
            self._place.update({i: (g, k) for k, i in enumerate(members)})

    @classmethod
    def source_dims(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: RowwiseSettings | CastSettings) -> list[int]:
        """Widths of the full model to train: as asked, or the widest uniform width whose stored rows fit the budget."""
        if config.budget_bytes is None:
            return dims_from_config(fields, config)
        if config.dims is not None:
            raise ConfigError(f"embedding {cls.method_name!r}: give per-field dims or a budget, not both")
        scale_bias = getattr(settings, "scale_bias", "fp16")
        for d in range(config.dim, 0, -1):
            if quantized_bytes(fields, [d] * len(fields), cls.KIND, scale_bias) <= config.budget_bytes:
                return [d] * len(fields)
        raise BudgetError(f"embedding {cls.method_name!r}: budget of {config.budget_bytes} bytes is below one {cls.KIND} dimension per field "
                          f"({quantized_bytes(fields, [1] * len(fields), cls.KIND, scale_bias)} bytes)")

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: RowwiseSettings | CastSettings) -> "ReducedPrecisionEmbedding":
        raise ConfigError(f"embedding {cls.method_name!r} is converted from a trained full model (use create_embedding or embslim train)")

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: RowwiseSettings | CastSettings, meta: dict) -> "ReducedPrecisionEmbedding":
        return cls(fields, meta["dims"], settings)

    @classmethod
    @torch.no_grad()
    def from_trained(cls, full: FullEmbedding, settings: RowwiseSettings | CastSettings, budget_bytes: int | None) -> "ReducedPrecisionEmbedding":
        """Quantise (or cast) every table of a trained full embedding."""
        module = cls(full.fields, full.dims, settings)
        for g, d in enumerate(full.group_dims):
            weight = full.tables[g].detach().float()
            if cls.KIND.startswith("int"):
                codes, scale_bias = quantize_rows(weight, BITS[cls.KIND], TORCH_DTYPES[settings.scale_bias])
                getattr(module, f"codes_{d}").copy_(codes)
                getattr(module, f"scale_bias_{d}").copy_(scale_bias)
            else:
                getattr(module, f"values_{d}").copy_(weight)
        used = module.memory_bytes()
        if budget_bytes is not None:
            if used > budget_bytes:
                raise BudgetError(f"embedding {cls.method_name!r} needs {used} bytes at widths {sorted(set(full.dims))}, over the budget of {budget_bytes}")
            wider = quantized_bytes(full.fields, [d + 1 for d in full.dims], cls.KIND, getattr(settings, "scale_bias", "fp16"))
            if wider <= budget_bytes:
                module.note = f"{cls.KIND} at its natural size ({used} bytes): the precision, not the budget, sets the bytes"
            else:
                module.note = (f"{cls.KIND} keeps its precision: width {max(full.dims)} is the widest whose rows fit the budget, "
                               f"so the full model was trained at that width and converted")
        return module

    @property
    def dims(self) -> list[int]:
        return list(self._dims)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        if field not in self._place:
            return torch.zeros((*ids.shape, 0), device=ids.device)
        g, k = self._place[field]
        d = self.group_dims[g]
        return self.read_rows(d, ids + getattr(self, f"offsets_{d}")[k])

    def read_rows(self, d: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows (any shape) of the width-d table as float32 vectors [..., d]."""
        if self.KIND.startswith("int"):
            return dequantize_rows(take_rows(getattr(self, f"codes_{d}"), rows), take_rows(getattr(self, f"scale_bias_{d}"), rows), d,
                                   BITS[self.KIND])
        return take_rows(getattr(self, f"values_{d}"), rows).float()

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        """One gather and one decoding per width group (not one per field)."""
        return lookup_by_width_group(self, ids, fields, lambda g, d, rows: self.read_rows(d, rows).unbind(1))

    def artifact_meta(self) -> dict:
        return {"dims": self._dims}


def _register(kind: str, settings: type) -> type[ReducedPrecisionEmbedding]:
    cls = type(f"{kind.capitalize()}Embedding", (ReducedPrecisionEmbedding,), {"KIND": kind, "__doc__": f"Full tables stored as {kind}."})
    return register_embedding(kind, settings=settings, budgeted=True, source="trained")(cls)


INT_METHODS = {kind: _register(kind, RowwiseSettings) for kind in ("int8", "int4", "int2")}
CAST_METHODS = {kind: _register(kind, CastSettings) for kind in ("fp16", "bf16")}
