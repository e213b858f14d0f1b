"""What every backbone is: embeddings in, one score per row out."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import FeatureEmbedding, Stage
from embslim.embeddings.batch import SparseBatch
from embslim.errors import ConfigError


@dataclass(frozen=True)
class ModelOptions:
    """Hyper-parameters of the backbones; each model reads the ones it needs."""

    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    dropout_mask: str = "bernoulli"  # MLP dropout of CTR backbones: "bernoulli" (nn.Dropout) or "bits" (cheaper draws, layers.BitsDropout)
    cross_layers: int = 3
    attention_layers: int = 3
    heads: int = 2
    maxlen: int = 50  # sequence models: items of history read (the last ones)
    blocks: int = 2  # sequence models: attention blocks (SASRec, HSTU)
    graph_layers: int = 3  # LightGCN propagation layers

    @classmethod
    def from_dict(cls, values: dict) -> "ModelOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model options {unknown}; known: {sorted(known)}")
        if values.get("dropout_mask", "bernoulli") not in ("bernoulli", "bits"):
            raise ConfigError(f"dropout mask must be bernoulli or bits, got {values['dropout_mask']!r}")
        return cls(**{k: tuple(v) if k == "hidden" else v for k, v in values.items()})


class Recommender(nn.Module):
    """A backbone over a feature embedding. Subclasses implement `score(vectors)`.

    The output is a logit for CTR/top-k and a rating for rating prediction; `bias`
    lets the trainer start rating models at the mean rating.

    `sequences` maps each behaviour sequence of the data (e.g. "history") to the field whose
    table its ids index. A backbone that sets `reads_sequences` gets one more input vector per
    sequence after the fields' own (`input_dims` gives all widths): by default the mean of the
    sequence's rows, read through that field's table by `lookup_sequence`, so the table is shared
    and counted once; `pool_sequence` is where a backbone attends instead (DIN).
    """

    reads_sequences: ClassVar[bool] = False

    def __init__(self, embedding: FeatureEmbedding, sequences: dict[str, str] | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.bias = nn.Parameter(torch.zeros(1))
        names = [f.name for f in embedding.fields]
        self.sequences = {name: names.index(field) for name, field in (sequences or {}).items()}

    @property
    def input_dims(self) -> list[int]:
        """Width of each input vector `score` sees: the fields', then one per sequence."""
        dims = self.embedding.dims
        return dims + [dims[f] for f in self.sequences.values()]

    def pool_sequence(self, name: str, field: int, ids: torch.Tensor, vectors: list[torch.Tensor]) -> torch.Tensor:
        """One [B, d] vector of a [B, L] id sequence (-1 padding): the mean of its rows, zero when empty."""
        rows = self.embedding.lookup_sequence(field, ids)
        return rows.sum(dim=1) / (ids >= 0).sum(dim=1, keepdim=True).clamp(min=1).to(rows.dtype)

    def input_vectors(self, batch: SparseBatch) -> list[torch.Tensor]:
        """The fields' vectors, then one pooled vector per sequence."""
        vectors = self.embedding(batch)
        return vectors + [self.pool_sequence(name, f, batch.sequences[name], vectors) for name, f in self.sequences.items()]

    @staticmethod
    def select_fields(fields: list[FieldSpec], user_field: str | None, item_field: str | None) -> list[str]:
        """Names of the fields this backbone uses (all, unless it is a user-item model)."""
        return [f.name for f in fields]

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def absorb_rotation(self, rotation: torch.Tensor) -> None:
        """Compensate an orthogonal `rotation` [d, d] applied to every field's vector (v -> v @ R).

        Backbones whose only non-linear use of the vectors is through inner products
        between fields (MF, FM, DeepFM) stay exactly the same function when every
        linear layer reading the vectors is rotated too. Others raise
        NotImplementedError, and searches that would align dimensions skip it.
        """
        raise NotImplementedError(f"{type(self).__name__} is not invariant to a rotation of its embeddings")

    def score_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        """`score` of the fields' vectors given as one [B, F, d] tensor; backbones that override it read the
        tensor whole (no split into fields and concatenation back), the same function as `score`."""
        return self.score(list(stacked.unbind(1)))

    def stacked_input(self, batch: SparseBatch) -> torch.Tensor | None:
        """The [B, F, d] input of `score_stacked`, where the backbone reads it and the embedding gives it."""
        if self.sequences or type(self).score_stacked is Recommender.score_stacked:
            return None
        return self.embedding.stacked(batch)

    def forward(self, batch: SparseBatch) -> torch.Tensor:
        stacked = self.stacked_input(batch)
        if stacked is not None:
            return self.score_stacked(stacked) + self.bias
        return self.score(self.input_vectors(batch)) + self.bias

    def forward_train(self, batch: SparseBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and the per-field vectors it came from (for regularising the rows a batch used)."""
        stacked = self.stacked_input(batch)
        if stacked is not None:
            return self.score_stacked(stacked) + self.bias, list(stacked.unbind(1))
        vectors = self.input_vectors(batch)
        return self.score(vectors) + self.bias, vectors

    def embedding_bytes(self, stage: Stage = "serve") -> int:
        """Bytes of the embedding layer plus any projection that aligns its widths."""
        aligner = getattr(self, "aligner", None)
        extra = aligner.memory_bytes() if aligner is not None else 0
        return self.embedding.memory_bytes(stage) + extra * (3 if stage == "train" else 1)

    def embedding_params(self) -> int:
        aligner = getattr(self, "aligner", None)
        return self.embedding.parameter_count() + (sum(p.numel() for p in aligner.parameters()) if aligner is not None else 0)


@torch.no_grad()
def rotate_concat_reader(linear: nn.Linear, rotation: torch.Tensor, fields: int) -> None:
    """Rotate the input columns of a Linear that reads `fields` concatenated vectors of width d."""
    d = rotation.shape[0]
    if linear.in_features != d * fields:
        raise NotImplementedError("rotation needs every field at the same width")
    weight = linear.weight.view(linear.out_features, fields, d)
    linear.weight.copy_(torch.einsum("ofd,de->ofe", weight, rotation.to(weight.dtype)).reshape_as(linear.weight))
