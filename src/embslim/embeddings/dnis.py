"""The DNIS search layer (Cheng, Shen & Huang 2020): full tables scaled by a soft selection layer.

Each field's ids are cut into frequency blocks; alpha[block, k] in [0, 1] scales
dimension k of every value in the block, so the vector used is e_v * alpha[block(v)].
alpha starts at 1 (the full model) and is trained on validation loss by
`embslim.search.dnis`; `importance()` gives |e * alpha| per block and dimension,
from which pruning keeps the most important (block, dimension) pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, SliceContext
from embslim.embeddings.blocks import block_starts
from embslim.embeddings.full import FullEmbedding
from embslim.embeddings.registry import register_embedding
from embslim.errors import ConfigError


@dataclass(frozen=True)
class DNISSettings:
    """blocks: frequency blocks per field (a count, or increasing fractions of rows)."""

    blocks: int | tuple[float, ...] = 6


@register_embedding("dnis", settings=DNISSettings, source="search")
class DNISEmbedding(FullEmbedding):
    """Uniform-width full tables plus alpha of shape [total blocks, width]."""

    def __init__(self, fields: list[FieldSpec], dim: int, blocks: int | list[float] = 6, init_std: float = 0.01) -> None:
        super().__init__(fields, [dim] * len(fields), init_std)
        self.block_spec = blocks
        starts = [block_starts(f, blocks) for f in fields]
        offsets = np.r_[0, np.cumsum([f.cardinality for f in fields])[:-1]]
        self.field_blocks = [len(s) - 1 for s in starts]
        global_starts = np.concatenate([o + s[:-1] for o, s in zip(offsets, starts)] + [[offsets[-1] + fields[-1].cardinality]])
        self.register_buffer("global_starts", torch.from_numpy(global_starts.astype(np.int64)))
        self.alpha = nn.Parameter(torch.ones(len(global_starts) - 1, dim))

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: DNISSettings) -> "DNISEmbedding":
        if config.dims or config.budget_bytes:
            raise ConfigError("embedding 'dnis' takes one dim, not per-field dims or a budget (the search prunes to a budget)")
        return cls.from_artifact_meta(fields, settings, {"dim": config.dim}, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: DNISSettings, meta: dict, init_std: float = 0.01) -> "DNISEmbedding":
        module = cls(fields, meta["dim"], settings.blocks if isinstance(settings.blocks, int) else list(settings.blocks), init_std)
        module.settings = settings
        return module

    def artifact_meta(self) -> dict:
        return {"dim": self.width}

    @property
    def width(self) -> int:
        return self.group_dims[0]

    def scaled(self, rows: torch.Tensor) -> torch.Tensor:
        """Vectors of global table rows, scaled by their block's alpha."""
        block = torch.searchsorted(self.global_starts, rows, right=True) - 1
        return F.embedding(rows, self.tables[0], sparse=True) * self.alpha[block]

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return self.scaled(ids + self.table_of(field)[1])

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        vecs = self.scaled(ids + getattr(self, f"offsets_{self.width}")[fields])
        return list(vecs.unbind(1))

    def search_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def clamp_alpha(self) -> None:
        with torch.no_grad():
            self.alpha.clamp_(0.0, 1.0)

    def block_slices(self) -> list[slice]:
        """Rows of `alpha` that belong to each field."""
        ends = np.cumsum(self.field_blocks)
        return [slice(int(e - n), int(e)) for e, n in zip(ends, self.field_blocks)]

    @torch.no_grad()
    def importance(self) -> dict[str, np.ndarray]:
        """Per field, [blocks, width]: the expected |e_v * alpha| over the block's values, weighted by
        training frequency (so a never-seen OOV row does not dilute the block of the most frequent values)."""
        table = self.tables[0]
        weight = torch.from_numpy(np.concatenate([f.counts for f in self.fields]).astype(np.float32)) + 1e-3
        block = torch.searchsorted(self.global_starts, torch.arange(table.shape[0]), right=True) - 1
        sums = torch.zeros_like(self.alpha).index_add(0, block, table.abs() * weight.unsqueeze(1))
        mass = torch.zeros(self.alpha.shape[0]).index_add(0, block, weight).unsqueeze(1)
        score = (sums / mass * self.alpha).numpy()
        return {f.name: score[s] for f, s in zip(self.fields, self.block_slices())}

    def field_block_starts(self) -> dict[str, list[int]]:
        """Block starts of each field in its own id space (S+1 entries)."""
        g = self.global_starts.numpy()
        out, first = {}, 0
        offsets = getattr(self, f"offsets_{self.width}").numpy()
        for f, n, o in zip(self.fields, self.field_blocks, offsets):
            out[f.name] = (g[first:first + n] - o).tolist() + [f.cardinality]
            first += n
        return out

    def sliced(self, budget_bytes: int, context: SliceContext) -> FeatureEmbedding:
        """The searched table pruned to `budget_bytes` as the search pipeline prunes it (its pruning scores
        under the run's DNIS settings, `context.options["dnis"]`), holding the alpha-scaled searched values."""
        from embslim.embeddings.blockwise import BlockwiseEmbedding, BlockwiseSettings, layout_bytes, layout_to_json
        from embslim.search.dnis import DNISConfig, layout_for_budget, pruned_values, pruning_scores

        config = DNISConfig(**context.options.get("dnis", {}))
        folder = context.options.get("search_folder")
        scores = pruning_scores(context.model, context.data, config, context.seed, Path(folder) if folder else None)
        layouts = layout_for_budget(self, budget_bytes, config, scores)
        module = BlockwiseEmbedding(self.fields, layouts, self.width, precision=config.precision)
        module.settings = BlockwiseSettings(layout_to_json(layouts, self.width, config.precision))
        module.load_block_values(pruned_values(self, layouts))
        context.record.update({"rule": f"DNIS pruning scores ({config.score}) of the searched model, kept while they fit",
                               "bytes": layout_bytes(layouts, self.width, config.precision), "layout": module.settings.layout})
        return module
