"""What every backbone is: embeddings in, one score per row out."""
from __future__ import annotations

from dataclasses import dataclass, fields

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
    cross_layers: int = 3
    attention_layers: int = 3
    heads: int = 2
    graph_layers: int = 3  # LightGCN propagation layers

    @classmethod
    def from_dict(cls, values: dict) -> "ModelOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model options {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "hidden" else v for k, v in values.items()})


class Recommender(nn.Module):
    """A backbone over a feature embedding. Subclasses implement `score(vectors)`.

    The output is a logit for CTR/top-k and a rating for rating prediction; `bias`
    lets the trainer start rating models at the mean rating.
    """

    def __init__(self, embedding: FeatureEmbedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.bias = nn.Parameter(torch.zeros(1))

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

    def forward(self, batch: SparseBatch) -> torch.Tensor:
        return self.score(self.embedding(batch)) + self.bias

    def forward_train(self, batch: SparseBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and the per-field vectors it came from (for regularising the rows a batch used)."""
        vectors = self.embedding(batch)
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
