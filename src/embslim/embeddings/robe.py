"""ROBE (Desai et al., MLSys 2022, "Random Offset Block Embedding (ROBE) for compressed embedding tables
in deep learning recommendation systems"): every vector is read from one shared array of M floats.

Element j of the vector of id x in field f is array[(h(f, x, j // Z) + j mod Z) mod M] times a
sign s(f, x, j) in {-1, +1}: each block of Z consecutive elements starts at a hashed offset
and reads the array contiguously (wrapping at its end), so blocks of different ids overlap
in part rather than colliding whole. Z = 32 is the paper's (apd10/dlrm `--rma-chunk-size 32`);
the VLDB'24 benchmark ran Z = 1, per-element hashing. The offset hash salts the id with
(f, block); the Z signs of a block are bits of a second mix of that hash, so Z is at most 64.
M fills the budget. The array is a [M, 1] parameter. Each block is read as one row of a strided view of it
(row r = elements r..r+Z-1), with and without gradients; the gradient is sparse, one entry per element read, as
an element-wise `F.embedding` of the array would give (a traced export reads element-wise).
Serving bytes: 4·M plus one int64 seed, from which every salt is derived.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding
from embslim.embeddings.hashing import mix
from embslim.embeddings.multiplex import budget_floats, lookup_salts, positive_dims
from embslim.embeddings.registry import register_embedding
from embslim.errors import ConfigError

SIGN_BITS = 64


@functools.cache
def _byte_signs(device: torch.device) -> torch.Tensor:
    """[256, 8]: row b holds the signs 1 - 2 * bit i of b, the signs of eight consecutive elements."""
    bits = (torch.arange(256, device=device).unsqueeze(1) >> torch.arange(8, device=device)) & 1
    return (1 - 2 * bits).to(torch.float32)


class _BlockRead(torch.autograd.Function):
    """The block-wise read (`RobeEmbedding.read_blocks`, computed without autograd) with the gradient the
    element-wise read would give: a sparse [M, 1] gradient, each read element's upstream gradient times its sign
    at its array position (block start + offset, wrapped). Gathering 1-float rows element by element was the
    training lookup's largest cost."""

    @staticmethod
    def forward(ctx, array: torch.Tensor, values: torch.Tensor, starts: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
        ctx.save_for_backward(starts, signs)
        ctx.size, ctx.block = array.shape[0], block
        return values

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        starts, signs = ctx.saved_tensors
        size, d = ctx.size, signs.shape[-1]
        within = torch.arange(ctx.block, device=starts.device)
        positions = starts.clamp(max=size - ctx.block).unsqueeze(-1) + within
        wraps = (starts > size - ctx.block).nonzero(as_tuple=True)  # the rare block past the array's end
        if len(wraps[0]):
            positions[wraps] = (starts[wraps].unsqueeze(-1) + within).remainder(size)
        positions = positions.flatten(-2)[..., :d]
        values = (grad * signs.to(grad.dtype)).reshape(-1, 1)
        return torch.sparse_coo_tensor(positions.reshape(1, -1), values, (size, 1), check_invariants=False), None, None, None, None


@dataclass(frozen=True)
class RobeSettings:
    """chunk: Z, the elements read contiguously from one hashed offset (paper: 32; 1 hashes every element); seed: salts the hashes."""

    chunk: int = 32
    seed: int = 0


@register_embedding("robe", settings=RobeSettings, budgeted=True)
class RobeEmbedding(FeatureEmbedding):
    """One array of `size` floats; field f's vector reads ceil(dims[f] / chunk) signed blocks of it."""

    def __init__(self, fields: list[FieldSpec], dims: list[int], size: int, settings: RobeSettings, init_std: float = 0.01) -> None:
        super().__init__()
        if not 1 <= settings.chunk <= SIGN_BITS:
            raise ConfigError(f"embedding 'robe': chunk must be within [1, {SIGN_BITS}], got {settings.chunk}")
        self.fields, self._dims, self.settings = list(fields), [int(d) for d in dims], settings
        blocks = [math.ceil(d / settings.chunk) for d in self._dims]
        self.starts = np.r_[0, np.cumsum(blocks)[:-1]].tolist()
        self.register_buffer("seed", torch.tensor(settings.seed, dtype=torch.int64))
        self.array = nn.Parameter(torch.randn(size, 1) * init_std)  # signs keep every element at the full table's scale

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: RobeSettings) -> "RobeEmbedding":
        dims = positive_dims("robe", fields, config)
        size = min(budget_floats("robe", config.budget_bytes), sum(f.cardinality * d for f, d in zip(fields, dims)))
        return cls(fields, dims, size, settings, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: RobeSettings, meta: dict) -> "RobeEmbedding":
        return cls(fields, meta["dims"], meta["size"], settings)

    def artifact_meta(self) -> dict:
        return {"dims": self._dims, "size": self.array.shape[0]}

    @property
    def dims(self) -> list[int]:
        return list(self._dims)

    def offsets_and_signs(self, ids: torch.Tensor, fields: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Array positions and signs of ids [..., n] of n fields of one width d: two [..., n, d] tensors."""
        z, d = self.settings.chunk, self._dims[fields[0]]
        keys = torch.tensor([[self.starts[f] + b for b in range(math.ceil(d / z))] for f in fields], device=ids.device)
        salts = lookup_salts(self.seed, keys)
        block_hash = mix(ids.unsqueeze(-1), salts).unsqueeze(-1)  # [..., n, blocks, 1]
        within = torch.arange(min(z, d), device=ids.device)  # broadcast over blocks: no index kernel on the hot path
        size = self.array.shape[0]
        positions = block_hash.remainder(size) + within
        if size >= d:  # a block running past the end wraps once: a subtraction is cheaper than a remainder
            positions = torch.where(positions >= size, positions - size, positions)
        else:
            positions = positions.remainder(size)
        bits = (mix(block_hash, salts.unsqueeze(-1)) >> within) & 1
        return positions.flatten(-2)[..., :d], 1 - 2 * bits.flatten(-2)[..., :d].to(torch.float32)

    def read(self, ids: torch.Tensor, fields: list[int]) -> torch.Tensor:
        block = min(self.settings.chunk, self._dims[fields[0]])
        if self.array.shape[0] < block or torch.jit.is_tracing():  # element by element (a trace keeps no branch on data)
            positions, signs = self.offsets_and_signs(ids, fields)
            return F.embedding(positions, self.array, sparse=True).squeeze(-1) * signs
        if not (torch.is_grad_enabled() and self.array.requires_grad):
            return self.read_blocks(ids, fields)[0]
        with torch.no_grad():
            values, starts, signs = self.read_blocks(ids, fields)
        return _BlockRead.apply(self.array, values, starts, signs, block)

    def read_blocks(self, ids: torch.Tensor, fields: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`read` by blocks: each block of w = min(Z, d) elements is one row of a strided view of the array (row r
        = elements r..r+w-1), gathered like a table row, and its signs are looked up a byte of sign bits at a time;
        the rare block that wraps past the array's end is read element-wise. Returns the values [..., n, d], each
        block's start in the array [..., n, blocks] and the signs [..., n, d] (what the gradient needs)."""
        z, d = self.settings.chunk, self._dims[fields[0]]
        w, size = min(z, d), self.array.shape[0]  # size >= w: `read` takes the element path otherwise
        keys = torch.tensor([[self.starts[f] + b for b in range(math.ceil(d / z))] for f in fields], device=ids.device)
        salts = lookup_salts(self.seed, keys)
        block_hash = mix(ids.unsqueeze(-1), salts)  # [..., n, blocks]
        starts = block_hash.remainder(size)
        rows = self.array.view(-1).as_strided((size - w + 1, w), (1, 1))
        values = F.embedding(starts.clamp(max=size - w), rows)  # [..., n, blocks, w]
        wraps = (starts > size - w).nonzero(as_tuple=True)
        if len(wraps[0]):
            within = torch.arange(w, device=ids.device)
            values[wraps] = self.array.view(-1)[(starts[wraps].unsqueeze(-1) + within).remainder(size)]
        sign_bits = mix(block_hash, salts)
        sign_bytes = (sign_bits.unsqueeze(-1) >> torch.arange(0, w, 8, device=ids.device)) & 0xFF  # [..., n, blocks, ceil(w/8)]
        signs = F.embedding(sign_bytes, _byte_signs(ids.device)).flatten(-2)[..., :w].flatten(-2)[..., :d]
        return values.flatten(-2)[..., :d] * signs, starts, signs

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return self.read(ids.unsqueeze(-1), [field]).squeeze(-2)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        """One read per field width."""
        out: list[torch.Tensor | None] = [None] * len(fields)
        for d in sorted({self._dims[f] for f in fields}):
            cols = [j for j, f in enumerate(fields) if self._dims[f] == d]
            vecs = self.read(ids[:, cols], [fields[j] for j in cols])
            for j, vec in zip(cols, vecs.unbind(1)):  # one backward op, not one full-size gradient per field
                out[j] = vec
        return out

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.array]
