"""Mixed-dimension embeddings by the frequency rule of Ginart et al. (2019), at a byte budget.

Block s of every field gets d_s proportional to p_s^T (p_s: mean training frequency
of the block's values, T the temperature, 0.3 by default), capped at the base width
K. The scale is the largest one whose blockwise layout fits the budget, then the
remaining bytes go to the most popular blocks one dimension at a time. Blocks keep a
prefix of the K dimensions; the paper's per-block projections are not used, so all
the bytes are table rows, as with the other blockwise methods. `precision` stores them as
fp16 or row-wise int8 (see `embslim.embeddings.blockwise`), the layout sized for those bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig
from embslim.embeddings.blocks import block_starts
from embslim.embeddings.blockwise import BlockwiseEmbedding, FieldLayout, layout_bytes, row_overhead_bytes, value_bytes
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError


@dataclass(frozen=True)
class MDESettings:
    """blocks: frequency blocks per field (a count, or increasing fractions of rows); temperature: the power T;
    precision: how the values are stored (fp32, fp16, or int8 codes with an fp16 scale and bias per row)."""

    blocks: int | tuple[float, ...] = 6
    temperature: float = 0.3
    precision: Literal["fp32", "fp16", "int8"] = "fp32"


def mde_layout(fields: list[FieldSpec], width: int, budget_bytes: int, blocks: int | list[float] = 6,
               temperature: float = 0.3, precision: str = "fp32") -> dict[str, FieldLayout]:
    """Per-block prefix dimensions by the power-law rule, filling the budget (values stored at `precision`)
    without exceeding it."""
    starts = {f.name: block_starts(f, blocks) for f in fields}
    total = max(int(fields[0].counts.sum()), 1) if fields else 1
    pop = {f.name: np.array([f.counts[a:b].mean() / total for a, b in zip(s[:-1], s[1:])]) for f, s in zip(fields, starts.values())}

    def build(dims: dict[str, np.ndarray]) -> dict[str, FieldLayout]:
        return {n: FieldLayout(starts[n].tolist(), [list(range(int(d))) for d in dims[n]]) for n in starts}

    def dims_at(scale: float) -> dict[str, np.ndarray]:
        return {n: np.clip(np.round(scale * p**temperature), 0, width).astype(int) for n, p in pop.items()}

    if layout_bytes(build(dims_at(0.0)), width, precision) > budget_bytes:
        raise BudgetError(f"budget of {budget_bytes} bytes is below the block index alone")
    lo, hi = 0.0, 1.0
    while layout_bytes(build(dims_at(hi)), width, precision) <= budget_bytes and hi < 1e12:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if layout_bytes(build(dims_at(mid)), width, precision) <= budget_bytes else (lo, mid)
    dims = dims_at(lo)
    remaining = budget_bytes - layout_bytes(build(dims), width, precision)
    order = sorted(((p, n, s) for n, ps in pop.items() for s, p in enumerate(ps)), reverse=True)
    grown = True
    while grown:
        grown = False
        for _, n, s in order:
            cost = (starts[n][s + 1] - starts[n][s]) * (value_bytes(precision) + (0 if dims[n][s] else row_overhead_bytes(precision)))
            if dims[n][s] < width and cost <= remaining:
                dims[n][s] += 1
                remaining -= cost
                grown = True
    return build(dims)


@register_embedding("mde", settings=MDESettings, budgeted=True)
class MDEEmbedding(BlockwiseEmbedding):
    """Blockwise embedding whose layout comes from the MDE frequency rule and a budget."""

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: MDESettings) -> "MDEEmbedding":
        if config.budget_bytes is None:
            raise ConfigError("embedding 'mde' needs a budget (--budget)")
        blocks = settings.blocks if isinstance(settings.blocks, int) else list(settings.blocks)
        layouts = mde_layout(fields, config.dim, config.budget_bytes, blocks, settings.temperature, settings.precision)
        module = cls(fields, layouts, config.dim, config.init_std, settings.precision)
        module.settings = settings
        return module
