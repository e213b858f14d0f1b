"""Feature-interaction backbones for CTR (and any task): LR, FM, DeepFM, DCNv2, AutoInt.

All take per-field vectors of any widths: pairwise interactions go through a
`FieldAligner`, concatenation-based parts use the vectors as they are. A behaviour
history (`--history`) is one more input, the mean of its items' rows in the item table,
treated like any multi-valued field.
"""
from __future__ import annotations

import torch
from torch import nn

from embslim.data.fields import FeatureTable
from embslim.embeddings.base import FeatureEmbedding
from embslim.models.base import ModelOptions, Recommender, rotate_concat_reader
from embslim.models.layers import FieldAligner, fm_interaction, mlp
from embslim.models.registry import register_model


@register_model("lr")
class LR(Recommender):
    """Logistic regression on the embeddings; with dim 1 it is classic per-value LR."""

    reads_sequences = True

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, sequences: dict[str, str] | None = None,
                 item_rows: FeatureTable | None = None, **_: object) -> None:
        super().__init__(embedding, sequences, item_rows)
        self.linear = nn.Linear(sum(self.input_dims), 1, bias=False)

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.linear(torch.cat(vectors, dim=1)).squeeze(1)

    def score_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.linear(stacked.flatten(1)).squeeze(1)

    def absorb_rotation(self, rotation: torch.Tensor) -> None:
        rotate_concat_reader(self.linear, rotation, len(self.input_dims))

    def field_reader_directions(self) -> list[torch.Tensor] | None:
        if self.sequences or len(set(self.input_dims)) != 1:
            return None  # a history reads the item rows a second time, along another direction
        return list(self.linear.weight.detach().view(len(self.input_dims), -1))

    @torch.no_grad()
    def absorb_field_rotations(self, rotations: list[torch.Tensor]) -> None:
        weight = self.linear.weight.view(len(rotations), -1)
        for i, rotation in enumerate(rotations):
            weight[i] = weight[i] @ rotation.to(weight.dtype)


@register_model("fm")
class FM(Recommender):
    """Factorisation machine: first-order linear term plus all pairwise inner products."""

    reads_sequences = True

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, sequences: dict[str, str] | None = None,
                 item_rows: FeatureTable | None = None, **_: object) -> None:
        super().__init__(embedding, sequences, item_rows)
        self.linear = nn.Linear(sum(self.input_dims), 1, bias=False)
        self.aligner = FieldAligner(self.input_dims)

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.linear(torch.cat(vectors, dim=1)).squeeze(1) + fm_interaction(self.aligner(vectors))

    def score_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        if self.aligner.proj:
            return self.score(list(stacked.unbind(1)))
        return self.linear(stacked.flatten(1)).squeeze(1) + fm_interaction(stacked)

    def absorb_rotation(self, rotation: torch.Tensor) -> None:
        if self.aligner.proj:
            raise NotImplementedError("rotation needs every field at the same width")
        rotate_concat_reader(self.linear, rotation, len(self.input_dims))


@register_model("deepfm")
class DeepFM(FM):
    """FM plus an MLP over the concatenated embeddings, sharing the embeddings."""

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, sequences: dict[str, str] | None = None,
                 item_rows: FeatureTable | None = None, **kw: object) -> None:
        super().__init__(embedding, options, sequences, item_rows)
        self.deep = mlp(sum(self.input_dims), options.hidden, options.dropout, mask=options.dropout_mask)

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return super().score(vectors) + self.deep(torch.cat(vectors, dim=1)).squeeze(1)

    def score_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        """The FM and MLP parts read one flattened view of the [B, F, d] input (no concatenation)."""
        if self.aligner.proj:
            return self.score(list(stacked.unbind(1)))
        flat = stacked.flatten(1)
        return self.linear(flat).squeeze(1) + fm_interaction(stacked) + self.deep(flat).squeeze(1)

    def absorb_rotation(self, rotation: torch.Tensor) -> None:
        super().absorb_rotation(rotation)
        rotate_concat_reader(self.deep[0], rotation, len(self.input_dims))


class CrossLayer(nn.Module):
    """DCNv2 cross layer: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


@register_model("dcnv2")
class DCNv2(Recommender):
    """DCN-V2 (Wang et al. 2021), parallel form: full-rank cross network beside an MLP."""

    reads_sequences = True

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, sequences: dict[str, str] | None = None,
                 item_rows: FeatureTable | None = None, **_: object) -> None:
        super().__init__(embedding, sequences, item_rows)
        width = sum(self.input_dims)
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(options.cross_layers))
        self.deep = mlp(width, options.hidden, options.dropout, out_dim=None, mask=options.dropout_mask)
        self.head = nn.Linear(width + (options.hidden[-1] if options.hidden else width), 1)

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.score_flat(torch.cat(vectors, dim=1))

    def score_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.score_flat(stacked.flatten(1))

    def score_flat(self, x0: torch.Tensor) -> torch.Tensor:
        """The score of the fields' vectors concatenated into one [B, sum of widths] input."""
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)


@register_model("autoint")
class AutoInt(Recommender):
    """AutoInt (Song et al. 2019): multi-head self-attention over fields with residuals."""

    reads_sequences = True

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, sequences: dict[str, str] | None = None,
                 item_rows: FeatureTable | None = None, **_: object) -> None:
        super().__init__(embedding, sequences, item_rows)
        self.aligner = FieldAligner(self.input_dims)
        width = self.aligner.width
        heads = options.heads if width % options.heads == 0 else 1
        self.attention = nn.ModuleList(nn.MultiheadAttention(width, heads, dropout=options.dropout, batch_first=True) for _ in range(options.attention_layers))
        self.head = nn.Linear(width * len(self.input_dims), 1)
        self.linear = nn.Linear(sum(self.input_dims), 1, bias=False)

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.attend(self.aligner(vectors)) + self.linear(torch.cat(vectors, dim=1)).squeeze(1)

    def score_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        if self.aligner.proj:
            return self.score(list(stacked.unbind(1)))
        return self.attend(stacked) + self.linear(stacked.flatten(1)).squeeze(1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention part's score of the [B, F, width] field vectors."""
        for attn in self.attention:
            x = torch.relu(attn(x, x, x, need_weights=False)[0] + x)
        return self.head(x.flatten(1)).squeeze(1)
