"""Post-training reduced precision of a trained full table: row-wise int8/int4/int2, and fp16/bf16 storage.

int8/int4/int2 (Guan et al. 2019, "Post-Training 4-bit Quantization on Embedding Tables",
arXiv 1911.02079; FBGEMM's fused row-wise layout, pytorch/FBGEMM #616/#619): each row is
stored as b-bit codes plus a per-row scale and bias in fp16 (bf16 as a setting, FBGEMM
#5595), min/max uniform quantisation; 8/b codes share a byte, so a row costs
ceil(d*b/8) + 4 bytes. A row is stored as FBGEMM's fused row-wise layout (codes, then
scale, then bias, as bytes of one uint8 row), which PyTorch's own quantized embedding-bag
kernels read: int4 and int2 rows with fp16 scales are gathered and decoded in one fused
pass (faster than a float32 row gather: fewer bytes), the rest in a few tensor passes. fp16/bf16 cast every value (2 bytes). These are converters:
`from_trained` quantises the full model trained in the same run; they are not trained
further (no gradients through integer codes).

At d=16 the natural ratios are fp16 2x, int8 3.2x, int4 5.3x, int2 8x. Asked for fewer
bytes, a method keeps its precision and takes the widest uniform width whose rows fit;
the run then trains the full model *at that width* and converts it, rather than
truncating a wider trained table (the first d' columns of a trained table are not a
d'-dim model). `note` says which case applied.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import BITS, DTYPE_NAMES, EmbeddingConfig, FeatureEmbedding, storage_bytes
from embslim.embeddings.full import OFFSET_BYTES, FullEmbedding, dims_from_config, lookup_by_width_group
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError
from embslim.extras import available

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


def fuse_rows(codes: torch.Tensor, scale_bias: torch.Tensor) -> torch.Tensor:
    """Codes [n, c] and (scale, bias) [n, 2] (2-byte floats) -> FBGEMM's fused rows [n, c + 4] of bytes."""
    return torch.cat([codes, scale_bias.contiguous().view(torch.uint8).view(len(codes), 4)], dim=1)


def unfuse_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_rows` (views where the layout allows): codes [..., c] and the raw scale/bias bytes [..., 4]."""
    return rows[..., :-4], rows[..., -4:]


# PyTorch's fused gather-and-decode kernels for FBGEMM rows with fp16 scale and bias (bits -> op)
FUSED_KERNELS = {4: "embedding_bag_4bit_rowwise_offsets", 2: "embedding_bag_2bit_rowwise_offsets"}


def fused_kernel(bits: int, scale_dtype: torch.dtype, device: torch.device) -> Callable | None:
    """The quantized embedding-bag op that decodes these rows, where this build of PyTorch has it (CPU)."""
    if bits not in FUSED_KERNELS or scale_dtype != torch.float16 or device.type != "cpu":
        return None
    return getattr(torch.ops.quantized, FUSED_KERNELS[bits], None)


@functools.cache
def fbgemm_decoder() -> Callable | None:
    """FBGEMM's decoding of gathered fused rows with fp16 scale and bias, where fbgemm-gpu-cpu is installed
    (the `fbgemm` extra): int8 has no fused gather kernel in PyTorch (its 8-bit one wants fp32 scales)."""
    if not available("fbgemm_gpu"):  # importing it registers torch.ops.fbgemm
        return None
    return getattr(torch.ops.fbgemm, "FusedNBitRowwiseQuantizedSBHalfToFloat", None)


def read_fused_rows(table: torch.Tensor, rows: torch.Tensor, dim: int, bits: int, scale_dtype: torch.dtype) -> torch.Tensor:
    """Rows (any shape) of a fused row-wise table decoded to float32 [..., dim]: one fused kernel call where
    PyTorch has one for the layout (every bag one id), else a 4-byte-word gather decoded by FBGEMM where it is
    installed, or in a few tensor passes."""
    flat = rows.reshape(-1)
    tracing = torch.jit.is_tracing()  # a traced program keeps no dtype views and no Python-int lengths
    kernel = fused_kernel(bits, scale_dtype, table.device)
    if kernel is not None:
        offsets = (torch.ones_like(flat).cumsum(0) - 1 if tracing else
                   torch.arange(len(flat), dtype=flat.dtype, device=flat.device))  # one id per bag
        out = kernel(table, flat, offsets, False, 0, False, None, None, False)
        return out[:, :dim].reshape(*rows.shape, dim)
    if table.shape[1] % 4 == 0 and not tracing:  # gathering 4-byte words copies rows several times faster than bytes
        gathered = table.view(torch.int32).index_select(0, flat).view(torch.uint8)
    else:
        gathered = table.index_select(0, flat)
    decoder = None if tracing or scale_dtype != torch.float16 or table.device.type != "cpu" else fbgemm_decoder()
    if decoder is not None:
        return decoder(gathered, bits)[:, :dim].reshape(*rows.shape, dim)
    codes, raw = unfuse_rows(gathered)
    # a fresh copy: a single row's scale bytes are contiguous already but may start at an odd offset, which a view
    # as 2-byte floats refuses
    scale_bias = two_byte_floats(raw, scale_dtype) if tracing else raw.clone(memory_format=torch.contiguous_format).view(scale_dtype)
    return dequantize_rows(codes, scale_bias, dim, bits).reshape(*rows.shape, dim)


def two_byte_floats(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Little-endian fp16 or bf16 bytes [..., 2k] -> their values as float32 [..., k], by integer arithmetic:
    what `raw.view(dtype)` gives, in operations TorchScript can trace (it cannot trace a dtype view)."""
    bits = raw[..., 0::2].int() + (raw[..., 1::2].int() << 8)
    exp_bits, mant_bits, bias = (5, 10, 15) if dtype == torch.float16 else (8, 7, 127)
    exponent = (bits >> mant_bits) & ((1 << exp_bits) - 1)
    mantissa = bits & ((1 << mant_bits) - 1)
    normal = exponent > 0
    significand = torch.where(normal, mantissa + (1 << mant_bits), mantissa).float()
    scale = torch.where(normal, exponent, torch.ones_like(exponent)) - bias - mant_bits
    return (1 - 2 * (bits >> 15)).float() * torch.ldexp(significand, scale.float())


def dequantize_rows(packed: torch.Tensor, scale_bias: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    """Inverse of `quantize_rows` for gathered rows of any leading shape -> [..., dim] float32."""
    if bits == 8:
        codes = packed[..., :dim].float()  # one code per byte: nothing to unpack
    else:  # shifts on the uint8 codes themselves (a widening to int64 first cost a pass at 8x the bytes)
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        codes = ((packed.unsqueeze(-1) >> shifts) & (2**bits - 1)).flatten(-2)[..., :dim].float()
    scale_bias = scale_bias.float()
    return codes.mul_(scale_bias[..., :1]).add_(scale_bias[..., 1:])  # in place: codes is a fresh float tensor


def int8_round_trip(rows: torch.Tensor) -> torch.Tensor:
    """[n, d] floats as row-wise int8 storage (fp16 scale and bias) serves them: the values `quantize_rows` then
    `dequantize_rows` give, in the same float operations, on the rows' own device and without packing
    (what a table trained through its int8 storage reads every step)."""
    lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    scale, bias = torch.stack([(hi - lo) / 255, lo], dim=1).to(torch.float16).float().unbind(1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((rows - bias[:, None]) / safe[:, None]).clamp_(0, 255)
    return codes.mul_(scale[:, None]).add_(bias[:, None])


def as_stored(rows: torch.Tensor, kind: str) -> torch.Tensor:
    """[n, d] float32 rows as `kind` storage ("fp32", "fp16" or "int8" row-wise) serves them, with the gradient
    passed straight through to the float32 values (quantisation-aware training of a table stored at `kind`)."""
    if kind == "fp32" or rows.numel() == 0:
        return rows
    stored = int8_round_trip(rows.detach()) if kind == "int8" else rows.detach().to(TORCH_DTYPES[kind]).float()
    return rows + (stored - rows).detach() if rows.requires_grad else stored


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
            if quantized:  # FBGEMM's fused rows: codes, scale, bias
                self.register_buffer(f"rows_{d}", torch.zeros(sum(rows), row_bytes(d, self.KIND, settings.scale_bias), dtype=torch.uint8))
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
                getattr(module, f"rows_{d}").copy_(fuse_rows(*quantize_rows(weight, BITS[cls.KIND], TORCH_DTYPES[settings.scale_bias])))
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
            return read_fused_rows(getattr(self, f"rows_{d}"), rows, d, BITS[self.KIND], TORCH_DTYPES[self.settings.scale_bias])
        return take_rows(getattr(self, f"values_{d}"), rows).float()

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        """One gather and one decoding per width group (not one per field)."""
        return lookup_by_width_group(self, ids, fields, lambda g, d, rows: self.read_rows(d, rows).unbind(1))

    def artifact_meta(self) -> dict:
        return {"dims": self._dims}

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Also reads artifacts written before the fused layout (codes and scale/bias as two tensors per width)."""
        tensors = dict(tensors)
        for d in self.group_dims:
            if f"codes_{d}" in tensors and f"rows_{d}" not in tensors:
                tensors[f"rows_{d}"] = fuse_rows(tensors.pop(f"codes_{d}"), tensors.pop(f"scale_bias_{d}"))
        super().load_artifact_tensors(tensors)


def _register(kind: str, settings: type) -> type[ReducedPrecisionEmbedding]:
    cls = type(f"{kind.capitalize()}Embedding", (ReducedPrecisionEmbedding,), {"KIND": kind, "__doc__": f"Full tables stored as {kind}."})
    return register_embedding(kind, settings=settings, budgeted=True, source="trained")(cls)


INT_METHODS = {kind: _register(kind, RowwiseSettings) for kind in ("int8", "int4", "int2")}
CAST_METHODS = {kind: _register(kind, CastSettings) for kind in ("fp16", "bf16")}
