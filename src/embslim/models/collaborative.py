"""User-item backbones for rating and top-k: MF and NeuMF. They use only the user and item fields."""
from __future__ import annotations

import torch
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import FeatureEmbedding
from embslim.errors import ConfigError
from embslim.models.base import ModelOptions, Recommender, rotate_concat_reader
from embslim.models.layers import FieldAligner, mlp
from embslim.models.registry import register_model


class UserItemModel(Recommender):
    @staticmethod
    def select_fields(fields: list[FieldSpec], user_field: str | None, item_field: str | None) -> list[str]:
        if user_field is None or item_field is None:
            raise ConfigError("this model needs a dataset with user and item fields (e.g. MovieLens)")
        return [user_field, item_field]


@register_model("mf", tasks=("rating", "topk", "ctr"))
class MF(UserItemModel):
    """Matrix factorisation: <p_u, q_i> plus per-user and per-item biases.

    The biases are linear read-outs of the same embeddings (w_u . p_u), so every
    byte of the model's per-id state lives in the tables a method compresses.
    """

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, **_: object) -> None:
        super().__init__(embedding)
        self.aligner = FieldAligner(embedding.dims)
        self.user_bias = nn.Linear(embedding.dims[0], 1, bias=False)
        self.item_bias = nn.Linear(embedding.dims[1], 1, bias=False)

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        aligned = self.aligner(vectors)
        dot = (aligned[:, 0] * aligned[:, 1]).sum(dim=1)
        return dot + self.user_bias(vectors[0]).squeeze(1) + self.item_bias(vectors[1]).squeeze(1)

    def retrieval(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query vectors of `users` and vectors of every item whose inner products rank items as `score` does.

        The user's bias and the global bias add the same to every item, so they drop out of a ranking.
        """
        items = self.embedding.field_table(1)
        queries = self.aligner.field(0, self.embedding.lookup(0, users))
        return (torch.cat([queries, queries.new_ones((len(users), 1))], dim=1),
                torch.cat([self.aligner.field(1, items), self.item_bias(items)], dim=1))

    def pair_encode(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Query vectors of `users`, vectors of `items` (scores up to the user's bias, as in `retrieval`) and the
        embedding rows they came from: what pairwise training (BPR, sampled softmax) needs."""
        user_rows, item_rows = self.embedding.lookup(0, users), self.embedding.lookup(1, items)
        queries = self.aligner.field(0, user_rows)
        return (torch.cat([queries, queries.new_ones((len(users), 1))], dim=1),
                torch.cat([self.aligner.field(1, item_rows), self.item_bias(item_rows)], dim=1), (user_rows, item_rows))

    def absorb_rotation(self, rotation: torch.Tensor) -> None:
        if self.aligner.proj:
            raise NotImplementedError("rotation needs the user and item vectors at the same width")
        for linear in (self.user_bias, self.item_bias):
            rotate_concat_reader(linear, rotation, 1)


@register_model("neumf", tasks=("rating", "topk", "ctr"))
class NeuMF(UserItemModel):
    """NeuMF (He et al. 2017): a GMF branch and an MLP branch over shared user/item embeddings."""

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, **_: object) -> None:
        super().__init__(embedding)
        self.aligner = FieldAligner(embedding.dims)
        self.deep = mlp(sum(embedding.dims), options.hidden, options.dropout, out_dim=None)
        self.head = nn.Linear(self.aligner.width + (options.hidden[-1] if options.hidden else sum(embedding.dims)), 1)

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        aligned = self.aligner(vectors)
        gmf = aligned[:, 0] * aligned[:, 1]
        return self.head(torch.cat([gmf, self.deep(torch.cat(vectors, dim=1))], dim=1)).squeeze(1)
