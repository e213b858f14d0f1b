"""The DNIS search layer (Cheng, Shen & Huang 2020): full tables scaled by a soft selection layer.

Each field's ids are cut into frequency blocks; alpha[block, k] in [0, 1] scales
dimension k of every value in the block, so the vector used is e_v * alpha[block(v)].
alpha starts at 1 (the full model) and is trained on validation loss by
`embslim.search.dnis`; `importance()` gives |e * alpha| per block and dimension,
from which pruning keeps the most important (block, dimension) pairs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.blocks import block_starts
from embslim.embeddings.full import FullEmbedding, field_meta, fields_from_meta
from embslim.embeddings.registry import register_embedding
from embslim.errors import ConfigError


@register_embedding("dnis")
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
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig) -> "DNISEmbedding":
        unknown = sorted(set(config.options) - {"blocks"})
        if unknown or config.dims or config.budget_bytes:
            raise ConfigError(f"embedding 'dnis' takes a dim and option 'blocks' only (got options {unknown})")
        return cls(fields, config.dim, config.options.get("blocks", 6), config.init_std)

    @property
    def width(self) -> int:
        return self.group_dims[0]

    def scaled(self, rows: torch.Tensor) -> torch.Tensor:
        """Vectors of global table rows, scaled by their block's alpha."""
        block = torch.searchsorted(self.global_starts, rows, right=True) - 1
        return F.embedding(rows, self.tables[0], sparse=True) * self.alpha[block]

    def forward(self, batch: SparseBatch) -> list[torch.Tensor]:
        offsets = getattr(self, f"offsets_{self.width}")
        single = [i for i, f in enumerate(self.fields) if not f.multivalued]
        out: list[torch.Tensor | None] = [None] * len(self.fields)
        if single:
            vecs = self.scaled(batch.ids + offsets[single])
            for j, i in enumerate(single):
                out[i] = vecs[:, j]
        for i, f in enumerate(self.fields):
            if f.multivalued:
                values, bag_offsets = batch.bags[f.name]
                lengths = bag_offsets[1:] - bag_offsets[:-1]
                rows = torch.repeat_interleave(torch.arange(len(lengths), device=values.device), lengths)
                pooled = torch.zeros(len(lengths), self.width, device=values.device).index_add(0, rows, self.scaled(values + offsets[i]))
                out[i] = pooled / lengths.clamp(min=1).unsqueeze(1) if f.pooling == "mean" else pooled
        return out

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

    def export(self, path: Path) -> None:
        meta = {"method": self.method_name, "fields": field_meta(self.fields), "dim": self.width, "blocks": self.block_spec}
        save_file({"table": self.tables[0].detach().contiguous(), "alpha": self.alpha.detach().contiguous(),
                   "global_starts": self.global_starts}, str(path), metadata={"embslim": json.dumps(meta)})

    @classmethod
    def from_artifact(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "DNISEmbedding":
        module = cls(fields_from_meta(meta["fields"]), meta["dim"], meta["blocks"])
        with torch.no_grad():
            module.tables[0].copy_(tensors["table"])
            module.alpha.copy_(tensors["alpha"])
            module.global_starts.copy_(tensors["global_starts"])
        return module
