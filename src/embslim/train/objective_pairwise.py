"""Pairwise top-k learning: (user, positive item, sampled negative items) with BPR or sampled softmax.

LightGCN learns this way (its `objective` is "pairwise"), and a pointwise user-item model (MF) does when
`TrainConfig.pair_loss` is set. The model provides `pair_encode(users, items)`: query vectors of the users,
vectors of the items (score = their inner product) and the embedding rows they came from, which the L2
term penalises (LightGCN's decay is on the layer-0 rows of the batch); and `retrieval(users)` for ranking.
A model that needs the training interactions themselves (a graph) receives them through
`set_interactions(users, items, n_users, n_items)` before training: the training split only, so nothing
of a held-out item reaches it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from embslim.data.fields import PreparedData
from embslim.errors import ConfigError
from embslim.models.base import Recommender
from embslim.train.objectives import Objective, l2_of_rows, register_objective

PAIR_LOSSES = ("bpr", "softmax")
PAIR_SAMPLINGS = ("interactions", "users")
RESAMPLE_ROUNDS = 20


@dataclass
class PairBatch:
    """Users [B], their positive items [B] and negatives: [B, k] per positive (BPR) or [N] shared by the batch (softmax)."""

    users: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor

    def __len__(self) -> int:
        return len(self.users)


def known_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique user * n_items + item keys of the interactions, for membership tests."""
    return np.unique(users.astype(np.int64) * n_items + items)


def sample_negatives(users: np.ndarray, k: int, n_items: int, known: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[len(users), k] items drawn uniformly from 1..n_items-1, redrawn while they are the user's training items.

    After `RESAMPLE_ROUNDS` redraws a collision is kept (only a user who has nearly every item can meet one).
    """
    neg = rng.integers(1, n_items, size=(len(users), k))
    for _ in range(RESAMPLE_ROUNDS):
        keys = users[:, None].astype(np.int64) * n_items + neg
        pos = np.searchsorted(known, keys).clip(max=len(known) - 1)
        bad = known[pos] == keys
        if not bad.any():
            break
        neg[bad] = rng.integers(1, n_items, size=int(bad.sum()))
    return neg


@register_objective("pairwise")
class PairwiseObjective(Objective):
    """One pass over the training interactions per epoch, in an order and with negatives fixed by seed and epoch.

    `pair_loss` "bpr" (the default when the model asks for this objective): -log sigmoid(s_pos - s_neg), averaged
    over `negatives` uniform negatives per positive that are not the user's training items. "softmax": cross-entropy
    of the positive against `negatives` uniform items shared by the batch (a negative equal to the row's positive
    is masked). L2: `embedding_l2` times the mean squared norm of the user, positive and negative rows, each
    averaged over its rows (LightGCN's reference penalises half that sum, so its decay 1e-4 is 5e-5 here).

    `pair_sampling` "interactions" (default): an epoch is a shuffled pass over the training interactions, so a
    user weighs as much as its history. "users": an epoch is as many draws of a uniform user (among those with
    training items) and a uniform one of its items, which weighs every user alike (LightGCN's reference samples so).
    """

    def __init__(self, model: Recommender, data: PreparedData, config) -> None:
        super().__init__(model, data, config)
        self.pair_loss = getattr(config, "pair_loss", "") or "bpr"
        if self.pair_loss not in PAIR_LOSSES:
            raise ConfigError(f"pair loss must be one of {list(PAIR_LOSSES)}, got {self.pair_loss!r}")
        if data.task != "topk":
            raise ConfigError(f"pairwise training (--pair-loss) is for task topk, not {data.task!r}")
        if not callable(getattr(model, "pair_encode", None)) or not callable(getattr(model, "retrieval", None)):
            raise ConfigError(f"{type(model).__name__} does not score by inner products of user and item vectors, "
                              "so it cannot be trained pairwise (--pair-loss): use mf or lightgcn")
        train = data.split("train")
        self.users = train.ids[:, train.single_index(data.user_field)].astype(np.int64)
        self.items = train.ids[:, train.single_index(data.item_field)].astype(np.int64)
        self.n_items = len(data.items.label)
        self.n_users = next(f.cardinality for f in data.table.fields if f.name == data.user_field)
        self.known = known_keys(self.users, self.items, self.n_items)
        self.pair_sampling = getattr(config, "pair_sampling", "interactions") or "interactions"
        if self.pair_sampling not in PAIR_SAMPLINGS:
            raise ConfigError(f"pair sampling must be one of {list(PAIR_SAMPLINGS)}, got {self.pair_sampling!r}")
        self.by_user = np.argsort(self.users, kind="stable")
        self.active_users, self.user_starts, self.user_counts = np.unique(self.users[self.by_user], return_index=True, return_counts=True)
        set_interactions = getattr(model, "set_interactions", None)
        if set_interactions is not None:
            set_interactions(self.users, self.items, self.n_users, self.n_items)

    def steps_per_epoch(self) -> int:
        return -(-len(self.users) // self.config.batch_size)

    def batches(self, epoch: int) -> Iterator[PairBatch]:
        rng = np.random.default_rng([self.config.seed, epoch, 2])
        order = self.user_uniform_rows(rng) if self.pair_sampling == "users" else rng.permutation(len(self.users))
        k = self.config.negatives
        per_pair = sample_negatives(self.users[order], k, self.n_items, self.known, rng) if self.pair_loss == "bpr" else None
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            if per_pair is not None:
                neg = per_pair[start:start + len(rows)]
            else:
                neg = rng.integers(1, self.n_items, size=k)
            yield PairBatch(torch.from_numpy(self.users[rows]), torch.from_numpy(self.items[rows]), torch.from_numpy(neg))

    def user_uniform_rows(self, rng: np.random.Generator) -> np.ndarray:
        """Training rows for one epoch: a uniform user with training items, then a uniform one of its rows, as many times as there are rows."""
        picks = rng.integers(0, len(self.active_users), size=len(self.users))
        within = (rng.random(len(self.users)) * self.user_counts[picks]).astype(np.int64)
        return self.by_user[self.user_starts[picks] + within]

    def pair_losses(self, batch: PairBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss of each (user, positive) of the batch and the embedding rows it read."""
        b = len(batch)
        items = torch.cat([batch.positives, batch.negatives.reshape(-1)])
        queries, vectors, (user_rows, item_rows) = self.model.pair_encode(batch.users, items)
        pos, neg = vectors[:b], vectors[b:]
        s_pos = (queries * pos).sum(dim=-1)
        if self.pair_loss == "bpr":
            s_neg = torch.einsum("bd,bkd->bk", queries, neg.reshape(b, batch.negatives.shape[1], -1))
            losses = F.softplus(s_neg - s_pos.unsqueeze(1)).mean(dim=1)
        else:
            s_neg = (queries @ neg.T).masked_fill(batch.negatives.unsqueeze(0) == batch.positives.unsqueeze(1), -torch.inf)
            logits = torch.cat([s_pos.unsqueeze(1), s_neg], dim=1)
            losses = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long), reduction="none")
        return losses, [user_rows, item_rows[:b], item_rows[b:]]

    def loss(self, batch: PairBatch) -> torch.Tensor:
        losses, rows = self.pair_losses(batch)
        loss = losses.mean()
        if self.config.embedding_l2:
            loss = loss + self.config.embedding_l2 * l2_of_rows(rows)
        return loss

    def validation_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each held-out validation (user, item) with its negatives, drawn once per seed as training draws them."""
        if getattr(self, "_validation", None) is None:
            val = self.data.split("val")
            users = val.ids[:, val.single_index(self.data.user_field)].astype(np.int64)
            items = val.ids[:, val.single_index(self.data.item_field)].astype(np.int64)
            rng = np.random.default_rng([self.config.seed, 0, 4])
            k = self.config.negatives
            neg = (sample_negatives(users, k, self.n_items, self.known, rng) if self.pair_loss == "bpr"
                   else rng.integers(1, self.n_items, size=k))
            self._validation = (users, items, neg)
        return self._validation

    def validation_size(self) -> int:
        return len(self.validation_pairs()[0])

    def validation_batch(self, indices: np.ndarray) -> PairBatch:
        users, items, neg = self.validation_pairs()
        return PairBatch(torch.from_numpy(users[indices]), torch.from_numpy(items[indices]),
                         torch.from_numpy(neg[indices] if self.pair_loss == "bpr" else neg))

    def example_losses(self, batch: PairBatch) -> torch.Tensor:
        return self.pair_losses(batch)[0]

    def example_blocks(self, indices: np.ndarray, field: str, starts: np.ndarray) -> np.ndarray | None:
        if getattr(self.model, "set_interactions", None) is not None:
            return None  # a graph model's every score reads rows of many users and items
        users, items, _ = self.validation_pairs()
        ids = users if field == self.data.user_field else items
        return np.searchsorted(starts, ids[indices], side="right") - 1

    @torch.no_grad()
    def rank_scores(self, users: np.ndarray, split: str) -> torch.Tensor:
        queries, items = self.model.retrieval(torch.as_tensor(users, dtype=torch.long))
        return queries @ items.T
