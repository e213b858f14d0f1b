"""What every backbone is: embeddings in, one score per row out."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from embslim.data.fields import FeatureTable, FieldSpec
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

    Given `item_rows` (one row per item id, `encode.item_table`), a behaviour is its item's id and
    its item-side features (genre), as the candidate is, the way DIN's paper joins goods_id and
    cate_id: each side field adds one more pooled vector per sequence, read through that field's
    own table (no new table, bytes counted once). The OOV item id stands for many items and has no
    side values. The per-item side ids are buffers (`side_ids_<field>`), so a checkpoint carries them
    and `item_rows` may also be those tensors by field number (how `embslim export` rebuilds a model).
    """

    reads_sequences: ClassVar[bool] = False

    def __init__(self, embedding: FeatureEmbedding, sequences: dict[str, str] | None = None,
                 item_rows: FeatureTable | dict[int, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.bias = nn.Parameter(torch.zeros(1))
        names = [f.name for f in embedding.fields]
        self.sequences = {name: names.index(field) for name, field in (sequences or {}).items()}
        self.side_fields: list[int] = []
        if self.sequences and item_rows is not None:
            if isinstance(item_rows, FeatureTable):
                keys = {names[f] for f in self.sequences.values()}
                sides = [i for i, f in enumerate(embedding.fields) if f.side == "item" and f.name not in keys]
                item_rows = {i: item_side_ids(item_rows, names[i]) for i in sides}
            self.side_fields = sorted(item_rows)
            for i in self.side_fields:
                self.register_buffer(f"side_ids_{i}", item_rows[i])

    @property
    def input_dims(self) -> list[int]:
        """Width of each input vector `score` sees: the fields', then per sequence its items' and their side fields'."""
        dims = self.embedding.dims
        return dims + [dims[g] for f in self.sequences.values() for g in (f, *self.side_fields)]

    def behaviour_rows(self, field: int, ids: torch.Tensor) -> list[torch.Tensor]:
        """[B, L, d] rows of the items `ids` (-1 padding) in `field`'s table, then of each side field of
        those items (its values pooled as the field pools them); zeros at padding."""
        out = [self.embedding.lookup_sequence(field, ids)]
        if not self.side_fields:
            return out
        items, where = torch.unique(ids.clamp(min=0), return_inverse=True)  # each distinct item's side values pooled once
        padding = (ids < 0).unsqueeze(-1)
        for side in self.side_fields:
            values = getattr(self, f"side_ids_{side}")[items]  # [items, G]
            pooled = self.embedding.lookup_sequence(side, values).sum(dim=1)
            if self.embedding.fields[side].pooling == "mean":
                pooled = pooled / (values >= 0).sum(dim=1, keepdim=True).clamp(min=1).to(pooled.dtype)
            out.append(pooled[where].masked_fill(padding, 0))
        return out

    def pool_sequence(self, name: str, field: int, ids: torch.Tensor, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """[B, d] vectors of a [B, L] id sequence (-1 padding), one per `behaviour_rows` part: the mean of its rows,
        zero when empty."""
        count = (ids >= 0).sum(dim=1, keepdim=True).clamp(min=1)
        return [rows.sum(dim=1) / count.to(rows.dtype) for rows in self.behaviour_rows(field, ids)]

    def input_vectors(self, batch: SparseBatch) -> list[torch.Tensor]:
        """The fields' vectors, then the pooled vectors of each sequence."""
        vectors = self.embedding(batch)
        return vectors + [v for name, f in self.sequences.items() for v in self.pool_sequence(name, f, batch.sequences[name], vectors)]

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

    def field_reader_directions(self) -> list[torch.Tensor] | None:
        """Per field, the one direction [d] along which the score reads that field's vector, for backbones
        whose score is linear in each field's vector and reads every field once (LR); None for the rest.
        Such a backbone takes a different rotation per field (`absorb_field_rotations`)."""
        return None

    def absorb_field_rotations(self, rotations: list[torch.Tensor]) -> None:
        """Compensate an orthogonal rotation per field (field i's vectors v -> v @ rotations[i]); only
        backbones with `field_reader_directions` can."""
        raise NotImplementedError(f"{type(self).__name__} needs one rotation for every field")

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


def item_side_ids(item_rows: FeatureTable, name: str) -> torch.Tensor:
    """[items, G] ids of field `name` for each item id (-1 padding; a single-valued field has G = 1), none for the OOV id 0."""
    field = next(f for f in item_rows.fields if f.name == name)
    ids = item_rows.bags[name] if field.multivalued else item_rows.ids[:, item_rows.single_index(name), None]
    ids = torch.as_tensor(ids, dtype=torch.int64).clone()
    ids[0] = -1
    return ids


@torch.no_grad()
def rotate_concat_reader(linear: nn.Linear, rotation: torch.Tensor, fields: int) -> None:
    """Rotate the input columns of a Linear that reads `fields` concatenated vectors of width d."""
    d = rotation.shape[0]
    if linear.in_features != d * fields:
        raise NotImplementedError("rotation needs every field at the same width")
    weight = linear.weight.view(linear.out_features, fields, d)
    linear.weight.copy_(torch.einsum("ofd,de->ofe", weight, rotation.to(weight.dtype)).reshape_as(linear.weight))
