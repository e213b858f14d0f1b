"""DIN: Deep Interest Network (Zhou et al., KDD 2018) for CTR with a behaviour history.

Each behaviour h of a row's history (`--history N`) is scored against the candidate item c
by a local activation unit, an MLP over [h, c, h - c, h * c] with a Dice activation; the
history is the sum of its behaviours weighted by those scores. The weights are deliberately
not softmax-normalised (the paper: it keeps the intensity of the user's interest), padding
positions are never scored, and the attention MLP sees only real behaviours, so Dice's batch
statistics and the output do not depend on how much padding a batch carries.

A behaviour, like the candidate, is its item's id and the item's side fields (MovieLens: the
genre bag, pooled), concatenated, as the paper joins goods_id and cate_id. Behaviours are read
through the candidate's tables (`Recommender.behaviour_rows`): the item and genre tables are
shared by candidate and history, so every embedding method serves both and its bytes are
counted once. The pooled history joins the other fields' vectors and an MLP with
Dice, (200, 80) as in the paper, gives the logit. Without a history DIN is that MLP alone (the
paper's base model).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FeatureTable
from embslim.embeddings.base import FeatureEmbedding
from embslim.models.base import ModelOptions, Recommender
from embslim.models.registry import register_model

PAPER_HIDDEN = (200, 80)  # used unless --hidden asks for other widths
ATTENTION_HIDDEN = 36  # the activation unit's hidden width in the paper's figure 2


class Dice(nn.Module):
    """Dice (the paper's data-adaptive PReLU): p = sigmoid(batch-normalised x), out = p*x + (1-p)*alpha*x.

    A training batch of one row cannot be normalised by its own statistics, so it uses the running ones.
    """

    def __init__(self, width: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False, eps=eps)
        self.alpha = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            normed = F.batch_norm(x, self.norm.running_mean, self.norm.running_var, training=False, eps=self.norm.eps)
        else:
            normed = self.norm(x)
        p = torch.sigmoid(normed)
        return p * x + (1 - p) * self.alpha * x


class ActivationUnit(nn.Module):
    """Relevance of each behaviour to its candidate: MLP([h, c, h - c, h * c]) -> one unnormalised weight."""

    def __init__(self, width: int, hidden: int = ATTENTION_HIDDEN) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4 * width, hidden), Dice(hidden), nn.Linear(hidden, 1))

    def forward(self, behaviours: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[N, d] behaviours and their [N, d] candidates -> [N] weights."""
        x = torch.cat([behaviours, candidates, behaviours - candidates, behaviours * candidates], dim=1)
        return self.layers(x).squeeze(1)


def dice_mlp(in_dim: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Linear-Dice-Dropout stack ending in a Linear to one logit."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), Dice(h), nn.Dropout(dropout)]
        in_dim = h
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)


@register_model("din", tasks=("ctr", "rating"))
class DIN(Recommender):
    """Deep Interest Network: attention-pooled behaviours against the candidate, concatenated with every field, MLP."""

    reads_sequences = True

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, sequences: dict[str, str] | None = None,
                 item_rows: FeatureTable | None = None, **_: object) -> None:
        super().__init__(embedding, sequences, item_rows)
        dims = embedding.dims
        self.attention = nn.ModuleDict({name: ActivationUnit(sum(dims[g] for g in (f, *self.side_fields)))
                                        for name, f in self.sequences.items()})
        hidden = PAPER_HIDDEN if options.hidden == ModelOptions().hidden else options.hidden
        self.deep = dice_mlp(sum(self.input_dims), hidden, options.dropout)

    def pool_sequence(self, name: str, field: int, ids: torch.Tensor, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum of the behaviours weighted by their activation against the candidate (field `field` of the row and its
        side fields), split back into one vector per part of a behaviour."""
        parts = self.behaviour_rows(field, ids)
        rows = torch.cat(parts, dim=-1)
        mask = ids >= 0
        weights = rows.new_zeros(ids.shape)
        if mask.any():
            candidate = torch.cat([vectors[g] for g in (field, *self.side_fields)], dim=1)
            candidates = candidate.unsqueeze(1).expand_as(rows)
            weights = weights.masked_scatter(mask, self.attention[name](rows[mask], candidates[mask]))
        pooled = (weights.unsqueeze(-1) * rows).sum(dim=1)
        return list(pooled.split([p.shape[-1] for p in parts], dim=1))

    def score(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return self.deep(torch.cat(vectors, dim=1)).squeeze(1)
