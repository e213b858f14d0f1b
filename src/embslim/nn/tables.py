"""Drop-in replacements for `torch.nn.EmbeddingBag` and `torch.nn.Embedding` backed by any embslim method.

    bag = torch.nn.EmbeddingBag(n, d, mode="sum")
    bag = embslim.nn.EmbeddingBag(n, d, mode="sum", method="qr", budget_bytes=0.1, counts=counts)

Same constructor arguments where they apply (`num_embeddings`, `embedding_dim`, `mode`,
`padding_idx`, `include_last_offset`, `sparse`) and the same `forward`, so the swap needs no
other change to a model or its training loop; `memory_bytes()` and `export()` work as for every
embslim table. Keyword arguments: `method` (a registered method), `budget_bytes` (bytes, or a
fraction <= 1 of the fp32 table), `counts` (training frequency per id; without it every id counts
as equally frequent, so frequency-aware methods such as mde fall back to their uniform case) and
the method's own settings by name.

- Methods trained from scratch (full, hash, qr, mde, robe, tt, ...) train as they are.
- A search (method="dnis") trains its tables as full ones; `embslim.nn.DNISSearch` steps its
  selection layer on validation loss and prunes the tables in place to a budget.
- Post-training converters (int8, int4, fp16, svd, ...) train a float table and serve its
  conversion: in eval mode (and in `memory_bytes()`, `export()`) the table is converted, again
  whenever the weights changed since, so evaluation sees exactly what is served.
- A method narrower than `embedding_dim` (full at a budget) is zero-padded to it.
- Gradients are dense unless `sparse=True`, as in torch, so any optimiser works; embslim's own
  tables produce sparse gradients inside and are densified for such optimisers.
- With `method="full"` the module is torch's: `F.embedding_bag` / `F.embedding` on the same
  weight (`.weight`), so outputs match `torch.nn` exactly.
Initial weights follow torch: N(0, 1) (`init_std` changes it).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, FeatureEmbedding, convert_embedding, create_embedding, method_info
from embslim.embeddings.base import Stage, StepContext, storage_bytes
from embslim.embeddings.full import FullEmbedding
from embslim.embeddings.registry import config_for_source
from embslim.errors import ConfigError

MODES = ("sum", "mean", "max")


def budget_in_bytes(budget: int | float | None, table_bytes: int) -> int | None:
    """An int is bytes; a float in (0, 1] is that fraction of the fp32 tables' bytes (`table_bytes`)."""
    if budget is None:
        return None
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ConfigError(f"budget_bytes as a fraction must be in (0, 1], got {budget}")
        return int(budget * table_bytes)
    if budget <= 0:
        raise ConfigError(f"budget_bytes must be positive, got {budget}")
    return int(budget)


class TableSet(nn.Module):
    """embslim tables for a list of fields, built by one method under one budget; in a plain training loop.

    What the embslim trainer does around a method is done here from torch's own events: a gradient
    hook densifies sparse gradients (unless `sparse`) and runs the method's pre-step hook once per
    backward; its after-step hook runs before the next training lookup (the user's optimiser has
    stepped by then) or before anything reads the table. Converters train a float table and serve
    its conversion, redone whenever the weights changed.
    """

    def __init__(self, fields: list[FieldSpec], dims: list[int], method: str, budget_bytes: int | float | None, sparse: bool,
                 init_std: float, total_steps: int | None, settings: dict) -> None:
        super().__init__()
        self.fields, self.dims, self.sparse, self.method = fields, list(dims), sparse, method
        self.info = method_info(method)
        self.total_steps, self.steps = total_steps, 0
        self._backward_seen = self._pre_step_done = False
        self._conversion: list = [None, None]  # (converted module, weight versions it was made from); not a submodule
        uniform = len(set(dims)) == 1
        if not uniform and (method != "full" or budget_bytes is not None):
            raise ConfigError(f"tables of different widths {sorted(set(dims))} need method='full' without a budget; "
                              f"method {method!r} builds one width for all tables")
        table_bytes = storage_bytes(sum(f.cardinality * d for f, d in zip(fields, dims)), "fp32")
        self.config = EmbeddingConfig(method, max(dims), None if uniform else {f.name: d for f, d in zip(fields, dims)},
                                      budget_in_bytes(budget_bytes, table_bytes), init_std, dict(settings))
        if self.info.source == "trained":
            source = config_for_source(self.info, fields, self.config, self.info.parse(self.config.options))
            self.embedding: FeatureEmbedding = FullEmbedding.from_config(fields, source, None)
            self.served()  # a budget the converter cannot meet fails here, not at the first evaluation
        else:
            self.embedding = create_embedding(fields, self.config)
        for p in self.embedding.search_parameters():
            p.requires_grad_(False)  # a search layer (DNIS alpha) learns only from embslim.nn.DNISSearch's validation step
        if not self.embedding.size_is_final() and total_steps is None:
            raise ConfigError(f"method {method!r} reaches its size on a schedule: pass total_steps= (the optimiser steps of the run)")
        for p in self.embedding.sparse_parameters():
            p.register_post_accumulate_grad_hook(self._after_accumulate)

    def convert(self, embedding: FeatureEmbedding, config: EmbeddingConfig) -> None:
        """Replace the tables in place by `embedding`, built by `config` (DNIS pruning: the searched tables
        become blockwise ones); the model's parameters change, so its optimiser is rebuilt after this."""
        self.embedding, self.config = embedding, config
        self.method, self.info = config.method, method_info(config.method)
        self._backward_seen = self._pre_step_done = False
        self._conversion[:] = [None, None]
        for p in self.embedding.sparse_parameters():
            p.register_post_accumulate_grad_hook(self._after_accumulate)

    def context(self) -> StepContext:
        return StepContext(self.steps, self.total_steps or 0)

    def _after_accumulate(self, param: torch.Tensor) -> None:
        if not self.sparse and param.grad is not None and param.grad.is_sparse:
            param.grad = param.grad.to_dense()
        if not self._pre_step_done:
            self._pre_step_done = True
            self.embedding.before_optimizer_step(self.context())

    def _saw_backward(self, grad: torch.Tensor) -> None:
        self._backward_seen = True

    def finish_step(self) -> None:
        """After a backward, run the method's after-step hook (the user's optimiser has stepped by then)."""
        if self._backward_seen:
            self._backward_seen = self._pre_step_done = False
            self.steps += 1
            self.embedding.on_step_end(self.context())

    def forget_backward(self) -> None:
        """The backward just run was no training step (DNIS's validation step on alpha): no step hooks for it."""
        self._backward_seen = False

    def served(self) -> FeatureEmbedding:
        """What is served: the tables themselves, or a converter's conversion of their current weights."""
        self.finish_step()
        if self.info.source != "trained":
            return self.embedding
        version = tuple(p._version for p in self.embedding.parameters())
        if self._conversion[0] is None or version != self._conversion[1]:
            self._conversion[:] = [convert_embedding(self.embedding, self.config), version]
        return self._conversion[0]

    def current(self) -> FeatureEmbedding:
        if self.training:
            self.finish_step()
            return self.embedding
        return self.served()

    def _watched(self, field: int, out: torch.Tensor) -> torch.Tensor:
        if self.training and out.requires_grad:
            out.register_hook(self._saw_backward)
        if out.shape[-1] < self.dims[field]:
            out = F.pad(out, (0, self.dims[field] - out.shape[-1]))
        return out

    def vectors(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of `ids` (any shape) of one field, zero-padded to its width."""
        return self._watched(field, self.current().lookup(field, ids))

    def pooled(self, field: int, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Bags (values, offsets[B+1]) of one field pooled by its pooling, zero-padded to its width."""
        return self._watched(field, self.current().pool(field, values, offsets))

    def memory_bytes(self, stage: Stage = "serve") -> int:
        return self.embedding.memory_bytes(stage) if stage == "train" else self.served().memory_bytes(stage)


def single_field(num_embeddings: int, counts: Any, pooling: str) -> list[FieldSpec]:
    """The one field of a drop-in table, with its training counts (all equal without them)."""
    if num_embeddings < 1:
        raise ConfigError(f"need num_embeddings >= 1, got {num_embeddings}")
    return [FieldSpec("table", num_embeddings, checked_counts(counts, num_embeddings), multivalued=True,
                      pooling="mean" if pooling == "mean" else "sum")]


def checked_counts(counts: Any, rows: int) -> np.ndarray:
    counts = np.ones(rows, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    if counts.shape != (rows,):
        raise ConfigError(f"counts must hold one count per id ({rows}), got shape {counts.shape}")
    return counts


class _Table(TableSet):
    """The single table behind a drop-in EmbeddingBag or Embedding."""

    def __init__(self, num_embeddings: int, embedding_dim: int, method: str, budget_bytes: int | float | None,
                 counts: Any, sparse: bool, init_std: float, pooling: str, total_steps: int | None, settings: dict) -> None:
        if embedding_dim < 1:
            raise ConfigError(f"need embedding_dim >= 1, got {embedding_dim}")
        super().__init__(single_field(num_embeddings, counts, pooling), [embedding_dim], method, budget_bytes, sparse, init_std,
                         total_steps, settings)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    def full_weight(self) -> nn.Parameter | None:
        """The plain [n, d] table when the method is full at full width (torch's exact path), else None."""
        emb = self.embedding
        if self.method == "full" and isinstance(emb, FullEmbedding) and emb.dims == [self.embedding_dim]:
            return emb.tables[0]
        return None


class _DropIn(nn.Module):
    """What both drop-ins share: the table, its bytes, its artifact, and torch's `weight` for full."""

    table: _Table

    @property
    def weight(self) -> nn.Parameter:
        weight = self.table.full_weight()
        if weight is None:
            raise AttributeError(f"method {self.table.method!r} has no single [num_embeddings, embedding_dim] weight")
        return weight

    @property
    def embedding(self) -> FeatureEmbedding:
        """The embslim table (a converter's conversion in eval mode)."""
        return self.table.current()

    def memory_bytes(self, stage: Stage = "serve") -> int:
        """Exact bytes to serve the table (stage="train": with optimiser state, see FeatureEmbedding.memory_bytes)."""
        return self.table.memory_bytes(stage)

    def export(self, path) -> None:
        """Write the servable artifact (`embslim.embeddings.load_artifact` reads it back)."""
        self.table.served().export(path)


class EmbeddingBag(_DropIn):
    """`torch.nn.EmbeddingBag` over an embslim method: pooled bags of ids, by sum, mean or max."""

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm: float | None = None, norm_type: float = 2.0,
                 scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False, _weight: torch.Tensor | None = None,
                 include_last_offset: bool = False, padding_idx: int | None = None, *, method: str = "full",
                 budget_bytes: int | float | None = None, counts: Any = None, init_std: float = 1.0, total_steps: int | None = None,
                 **settings: Any) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if max_norm is not None or scale_grad_by_freq:
            raise ConfigError("max_norm and scale_grad_by_freq are not supported by embslim tables")
        self.num_embeddings, self.embedding_dim, self.mode = num_embeddings, embedding_dim, mode
        self.include_last_offset, self.padding_idx = include_last_offset, _padding(padding_idx, num_embeddings)
        self.table = _Table(num_embeddings, embedding_dim, method, budget_bytes, counts, sparse, init_std, mode, total_steps, settings)
        if _weight is not None:
            _load_weight(self, _weight)

    @classmethod
    def from_pretrained(cls, embeddings: torch.Tensor, freeze: bool = True, **kwargs: Any) -> "EmbeddingBag":
        """A bag whose table starts from (full) or is converted from (converters) a trained [n, d] weight."""
        bag = cls(embeddings.shape[0], embeddings.shape[1], _weight=embeddings, **kwargs)
        bag.requires_grad_(not freeze)
        return bag

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.table.full_weight()
        if weight is not None:
            return F.embedding_bag(input, weight, offsets, mode=self.mode, sparse=self.table.sparse, per_sample_weights=per_sample_weights,
                                   include_last_offset=self.include_last_offset, padding_idx=self.padding_idx)
        values, bag, bags = _flatten(input, offsets, self.include_last_offset)
        if per_sample_weights is not None and self.mode != "sum":
            raise ValueError(f"per_sample_weights are only supported for mode='sum', got mode={self.mode!r}")
        keep = values != self.padding_idx if self.padding_idx is not None else torch.ones_like(values, dtype=torch.bool)
        vecs = self.table.vectors(0, values) * keep.unsqueeze(1)
        if per_sample_weights is not None:
            vecs = vecs * per_sample_weights.reshape(-1, 1).to(vecs.dtype)
        out = vecs.new_zeros(bags, self.embedding_dim)
        if self.mode == "max":
            bag, vecs = bag[keep], vecs[keep]
            filled = torch.zeros(bags, dtype=torch.bool, device=out.device).index_fill(0, bag, True)
            out = out.index_reduce(0, bag, vecs, "amax", include_self=False)
            return out * filled.unsqueeze(1)
        out = out.index_add(0, bag, vecs)
        if self.mode == "mean":
            counts = torch.zeros(bags, device=out.device).index_add(0, bag, keep.to(out.dtype))
            out = out / counts.clamp(min=1).unsqueeze(1)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, method={self.table.method!r}"


class Embedding(_DropIn):
    """`torch.nn.Embedding` over an embslim method: one vector per id, any input shape."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, max_norm: float | None = None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False, _weight: torch.Tensor | None = None,
                 _freeze: bool = False, *, method: str = "full", budget_bytes: int | float | None = None, counts: Any = None,
                 init_std: float = 1.0, total_steps: int | None = None, **settings: Any) -> None:
        super().__init__()
        if max_norm is not None or scale_grad_by_freq:
            raise ConfigError("max_norm and scale_grad_by_freq are not supported by embslim tables")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = _padding(padding_idx, num_embeddings)
        self.table = _Table(num_embeddings, embedding_dim, method, budget_bytes, counts, sparse, init_std, "sum", total_steps, settings)
        if _weight is not None:
            _load_weight(self, _weight)
        elif self.padding_idx is not None and self.table.full_weight() is not None:
            with torch.no_grad():
                self.table.full_weight()[self.padding_idx].zero_()
        self.requires_grad_(not _freeze)

    @classmethod
    def from_pretrained(cls, embeddings: torch.Tensor, freeze: bool = True, **kwargs: Any) -> "Embedding":
        """An embedding whose table starts from (full) or is converted from (converters) a trained [n, d] weight."""
        return cls(embeddings.shape[0], embeddings.shape[1], _weight=embeddings, _freeze=freeze, **kwargs)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.table.full_weight()
        if weight is not None:
            return F.embedding(input, weight, self.padding_idx, sparse=self.table.sparse)
        out = self.table.vectors(0, input)
        if self.padding_idx is not None:
            out = out * (input != self.padding_idx).unsqueeze(-1)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, method={self.table.method!r}"


def _padding(padding_idx: int | None, num_embeddings: int) -> int | None:
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ConfigError(f"padding_idx must be within num_embeddings ({num_embeddings}), got {padding_idx}")
    return padding_idx % num_embeddings


def _load_weight(module: _DropIn, weight: torch.Tensor) -> None:
    """Start from a given [n, d] weight: the full table itself, or the float table a converter converts."""
    table = module.table
    inner = table.embedding
    if not isinstance(inner, FullEmbedding) or inner.dims != [module.embedding_dim]:
        raise ConfigError(f"method {table.method!r} cannot start from a dense [num_embeddings, embedding_dim] weight")
    if tuple(weight.shape) != (module.num_embeddings, module.embedding_dim):
        raise ConfigError(f"weight must have shape ({module.num_embeddings}, {module.embedding_dim}), got {tuple(weight.shape)}")
    with torch.no_grad():
        inner.tables[0].copy_(weight)


def _flatten(input: torch.Tensor, offsets: torch.Tensor | None, include_last_offset: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(values, bag of each value, number of bags) from torch's 2-D or 1-D-with-offsets input."""
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("offsets must be None when input is 2-D")
        bags, length = input.shape
        return input.reshape(-1), torch.arange(bags, device=input.device).repeat_interleave(length), bags
    if input.dim() != 1 or offsets is None or offsets.dim() != 1:
        raise ValueError("input must be 2-D, or 1-D with 1-D offsets")
    ends = offsets[1:] if include_last_offset else torch.cat([offsets[1:], offsets.new_tensor([len(input)])])
    starts = offsets[:-1] if include_last_offset else offsets
    lengths = (ends - starts).long()
    return input, torch.arange(len(lengths), device=input.device).repeat_interleave(lengths), len(lengths)
