"""Many tables under one budget, in TorchRec's `EmbeddingBagCollection` shape.

Each table (name, rows, width, the features it serves, its pooling) becomes one field of a
single embslim method, so one `budget_bytes` covers all of them and the method splits it
(mixed dimensions by frequency, one shared hash space, ...). Input is a TorchRec
`KeyedJaggedTensor` (output: a `KeyedTensor`) or, without TorchRec, a dict of feature name ->
(values, offsets) with torch.nn.EmbeddingBag's offsets, or -> {"values", "lengths"}
or {"values", "offsets"} with TorchRec's B+1 offsets
(output: a dict of feature name -> [B, width]). TorchRec stays optional:
`from_torchrec` reads its `EmbeddingBagConfig`s or a whole `EmbeddingBagCollection`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings import FeatureEmbedding
from embslim.embeddings.base import Stage
from embslim.embeddings.full import FullEmbedding
from embslim.errors import ConfigError
from embslim.extras import require
from embslim.nn.tables import TableSet, checked_counts


@dataclass(frozen=True)
class TableConfig:
    """One table: TorchRec's EmbeddingBagConfig fields that matter here, plus its training counts."""

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: tuple[str, ...] = ()
    pooling: str = "sum"
    counts: Any = field(default=None, compare=False, repr=False)

    def features(self) -> tuple[str, ...]:
        return tuple(self.feature_names) or (self.name,)


class EmbeddingBagCollection(nn.Module):
    """Pooled lookups of many keyed features from embslim tables sharing one budget."""

    def __init__(self, tables: list[TableConfig], *, method: str = "full", budget_bytes: int | float | None = None,
                 sparse: bool = False, init_std: float = 1.0, total_steps: int | None = None, **settings: Any) -> None:
        super().__init__()
        if not tables:
            raise ConfigError("an EmbeddingBagCollection needs at least one table")
        names = [t.name for t in tables]
        features = [f for t in tables for f in t.features()]
        for what, items in (("table", names), ("feature", features)):
            repeated = sorted({x for x in items if items.count(x) > 1})
            if repeated:
                raise ConfigError(f"{what} names must be unique, repeated: {repeated}")
        bad = [t.name for t in tables if t.pooling not in ("sum", "mean")]
        if bad:
            raise ConfigError(f"pooling must be 'sum' or 'mean' (tables {bad})")
        fields = [FieldSpec(t.name, t.num_embeddings, checked_counts(t.counts, t.num_embeddings), multivalued=True, pooling=t.pooling)
                  for t in tables]
        self.tables = list(tables)
        self.table_of = {f: i for i, t in enumerate(tables) for f in t.features()}
        self.set = TableSet(fields, [t.embedding_dim for t in tables], method, budget_bytes, sparse, init_std, total_steps, settings)

    @classmethod
    def from_torchrec(cls, source: Any, counts: Mapping[str, Any] | None = None, **kwargs: Any) -> "EmbeddingBagCollection":
        """From a TorchRec EmbeddingBagCollection (its configs; `method="full"` also copies its weights)
        or a list of EmbeddingBagConfig; `counts` maps table names to training counts."""
        module = cls(torchrec_tables(source, counts), **kwargs)
        if hasattr(source, "embedding_bags") and isinstance(module.set.embedding, FullEmbedding):
            module.load_weights({name: bag.weight for name, bag in source.embedding_bags.items()})
        return module

    @torch.no_grad()
    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy [rows, width] weights by table name into a full (or to-be-converted) collection."""
        emb = self.set.embedding
        if not isinstance(emb, FullEmbedding) or emb.dims != self.set.dims:
            raise ConfigError(f"method {self.set.method!r} cannot start from dense per-table weights")
        for i, t in enumerate(self.tables):
            if t.name in weights:
                table, first = emb.table_of(i)
                table[first:first + t.num_embeddings].copy_(weights[t.name])

    @property
    def embedding(self) -> FeatureEmbedding:
        return self.set.current()

    def memory_bytes(self, stage: Stage = "serve") -> int:
        """Exact bytes of all tables together (the budget is for this number)."""
        return self.set.memory_bytes(stage)

    def export(self, path) -> None:
        self.set.served().export(path)

    def forward(self, features: Any) -> Any:
        keyed = hasattr(features, "to_dict") and hasattr(features, "keys")
        bags = {k: (jt.values(), jt.offsets()) for k, jt in features.to_dict().items()} if keyed else {
            k: _bag(k, v) for k, v in features.items()}
        unknown = sorted(set(bags) - set(self.table_of))
        if unknown:
            raise KeyError(f"features {unknown} belong to no table; known: {sorted(self.table_of)}")
        out = {k: self.set.pooled(self.table_of[k], values.long(), offsets.long()) for k, (values, offsets) in bags.items()}
        if keyed:
            keys = list(features.keys())
            return keyed_tensor(keys, [out[k] for k in keys])
        return out


def torchrec_tables(source: Any, counts: Mapping[str, Any] | None = None) -> list[TableConfig]:
    """TableConfigs of a TorchRec EmbeddingBagCollection or a list of its EmbeddingBagConfigs; `counts` by table name."""
    configs = source.embedding_bag_configs() if hasattr(source, "embedding_bag_configs") else list(source)
    counts = counts or {}
    return [TableConfig(c.name, c.num_embeddings, c.embedding_dim, tuple(c.feature_names), c.pooling.name.lower(), counts.get(c.name))
            for c in configs]


def keyed_tensor(keys: list[str], tensors: list[torch.Tensor]) -> Any:
    """TorchRec's KeyedTensor of pooled [B, width] tensors (the output type of its EmbeddingBagCollection)."""
    require("torchrec", "a KeyedJaggedTensor input")
    from torchrec.sparse.jagged_tensor import KeyedTensor
    return KeyedTensor.from_tensor_list(keys, tensors)


def _bag(name: str, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, offsets[B+1]) from (values, torch.nn.EmbeddingBag's bag starts[B]), or from a dict with
    "values" and either "lengths" [B] or TorchRec's "offsets" [B+1]."""
    if isinstance(value, Mapping) and "values" in value and ("lengths" in value or "offsets" in value):
        values = torch.as_tensor(value["values"])
        if "offsets" in value:
            return values, torch.as_tensor(value["offsets"])
        lengths = torch.as_tensor(value["lengths"])
        return values, torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    if isinstance(value, (tuple, list)) and len(value) == 2:
        values, starts = (torch.as_tensor(v) for v in value)
        return values, torch.cat([starts, starts.new_tensor([len(values)])])
    raise ValueError(f"feature {name!r}: expected (values, offsets) or a dict with values and lengths (or offsets)")
