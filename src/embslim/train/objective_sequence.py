"""Next-item training and ranking for sequence backbones (SASRec, HSTU).

Each training example is one user's training history: position t of the input (items 0..t)
predicts item t + 1, every position at once, over the last `maxlen` items. The loss is chosen
by `TrainConfig.seq_loss`:
- "bce": the SASRec paper's, a logistic loss on the next item against one negative per position,
  drawn uniformly from the items the user has not interacted with in training;
- "softmax": sampled softmax as in the generative-recommenders reference, the next item against
  `softmax_negatives` uniform items shared by the batch, cosine similarities over `temperature`
  (accidental hits of the target are masked). Ranking then uses the same cosine similarity.
A validation query reads the training history, a test query the training and validation history,
so neither ever sees its own held-out item. Where the data has timestamps every batch carries the
times of its positions (`SequenceModel.encode`'s `times`): a training position's query time is its
target's time; a ranking query's final position, whose next item is held out, uses its own time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from embslim.data.fields import PreparedData
from embslim.data.histories import Histories, histories
from embslim.errors import ConfigError
from embslim.models.base import Recommender
from embslim.train.objectives import Objective, l2_of_rows, register_objective

SEQ_LOSSES = ("bce", "softmax")
RESAMPLE_ROUNDS = 20
POOL_BATCHES = 50  # length-grouped batching sorts the shuffled users in pools of this many batches


def tensors(times: tuple[np.ndarray, np.ndarray] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (item times, query times) pair as long tensors."""
    return None if times is None else (torch.as_tensor(times[0], dtype=torch.long), torch.as_tensor(times[1], dtype=torch.long))


def length_grouped(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of users of similar history length, in random order.

    The shuffled users are taken in pools of `POOL_BATCHES` batches, each pool sorted by length and cut into
    batches (every pool but the last is a whole number of batches, so there are as many batches as without
    grouping), and the batches shuffled: every user still appears once per epoch, and a batch of short
    histories reads few columns instead of maxlen.
    """
    pool = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class SequenceBatch:
    """Inputs [B, L] and next-item targets [B, L] (-1 where there is none), with the loss's negatives; a validation
    query has one target per row, [B], its held-out item. `times`: the positions' item and query times, [B, L] each,
    where the data has timestamps."""

    inputs: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor
    times: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@register_objective("sequence")
class SequenceObjective(Objective):
    def __init__(self, model: Recommender, data: PreparedData, config: Any) -> None:
        super().__init__(model, data, config)
        if config.seq_loss not in SEQ_LOSSES:
            raise ConfigError(f"seq_loss must be one of {list(SEQ_LOSSES)}, got {config.seq_loss!r}")
        if config.seq_loss == "softmax" and (config.softmax_negatives < 1 or config.temperature <= 0):
            raise ConfigError(f"sampled softmax needs softmax_negatives >= 1 and temperature > 0, got {config.softmax_negatives} and {config.temperature}")
        self.maxlen = model.maxlen
        self.n_items = len(data.items.label)
        self.history: dict[str, Histories] = {"val": histories(data, ("train",)), "test": histories(data, ("train", "val"))}
        train = self.history["val"]
        self.users = np.flatnonzero(train.lengths() >= 2)
        if len(self.users) == 0:
            raise ConfigError(f"dataset {data.name!r}: no user has two training items, so there is no next item to learn")
        self.seen = np.unique(np.repeat(np.arange(len(train)), train.lengths()) * self.n_items + train.items)
        self.lengths = train.lengths()
        # Length-grouped batches: a batch's summed loss over the mean number of positions per batch, so each batch's
        # gradient scales with the positions it holds, as in a random batch (a per-batch mean would give a batch of
        # one-item histories the weight of a full one). Adam's normalisation damps such scaling, so the measure that
        # counts is the validation curve, which matched random batches on the video games (recipes.py).
        self.positions_per_batch = float(np.minimum(self.lengths[self.users] - 1, self.maxlen).sum()) / self.steps_per_epoch()

    def steps_per_epoch(self) -> int:
        return -(-len(self.users) // self.config.batch_size)

    def batches(self, epoch: int) -> Iterator[SequenceBatch]:
        """Each batch reads as many columns as its longest history (up to maxlen): padding changes no real
        position's state, so this is the same computation with less work."""
        rng = np.random.default_rng([self.config.seed, epoch, 3])
        order = rng.permutation(self.users)
        train = self.history["val"]
        size = self.config.batch_size
        groups = (length_grouped(order, self.lengths, size, rng) if self.config.length_batches
                  else [order[start:start + size] for start in range(0, len(order), size)])
        for users in groups:
            width = min(self.maxlen, int(self.lengths[users].max()) - 1)
            inputs = train.last(users, width, drop_last=1)
            targets = np.where(inputs >= 0, train.last(users, width), -1)
            if self.config.seq_loss == "bce":
                negatives = self.unseen_items(np.repeat(users, width).reshape(targets.shape), rng)
            else:
                negatives = rng.integers(1, self.n_items, size=self.config.softmax_negatives)
            times = None if train.times is None else (train.last_times(users, width, drop_last=1), train.last_times(users, width))
            yield SequenceBatch(*(torch.as_tensor(a, dtype=torch.long) for a in (inputs, targets, negatives)), tensors(times))

    def unseen_items(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry, uniform over items 1.. that the entry's user has no training interaction with."""
        items = rng.integers(1, self.n_items, size=users.shape)
        for _ in range(RESAMPLE_ROUNDS):
            keys = users * self.n_items + items
            clash = self.seen[np.minimum(np.searchsorted(self.seen, keys), len(self.seen) - 1)] == keys
            if not clash.any():
                break
            items[clash] = rng.integers(1, self.n_items, size=int(clash.sum()))
        return items

    def loss(self, batch: SequenceBatch) -> torch.Tensor:
        states, used = self.model.encode(batch.inputs, batch.times)
        where = batch.targets >= 0
        h = states[where]
        positives = self.model.embedding.lookup(0, batch.targets[where])
        if self.config.seq_loss == "bce":
            negatives = self.model.embedding.lookup(0, batch.negatives[where])
            pos, neg = (h * positives).sum(-1), (h * negatives).sum(-1)
            loss = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        else:
            negatives = self.model.embedding.lookup(0, batch.negatives)
            h, pn, nn_ = F.normalize(h, dim=-1), F.normalize(positives, dim=-1), F.normalize(negatives, dim=-1)
            neg = (h @ nn_.T).masked_fill(batch.negatives.unsqueeze(0) == batch.targets[where].unsqueeze(1), -torch.inf)
            logits = torch.cat([(h * pn).sum(-1, keepdim=True), neg], dim=1) / self.config.temperature
            loss = F.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long))
        if self.config.length_batches:
            loss = loss * (len(h) / self.positions_per_batch)
        if self.config.embedding_l2:
            loss = loss + self.config.embedding_l2 * l2_of_rows(used + [positives, negatives])
        return loss

    def validation_queries(self) -> SequenceBatch:
        """Every validation user's training history, its held-out item and the loss's negatives (drawn once per seed):
        [n, maxlen] inputs, [n] targets, [n] unseen negatives (bce) or [softmax_negatives] shared ones."""
        if getattr(self, "_validation", None) is None:
            rows = self.data.splits["val"]
            users, targets = self.data.row_users()[rows], self.data.row_items()[rows]
            keep = self.history["val"].lengths()[users] > 0
            users, targets = users[keep], targets[keep]
            rng = np.random.default_rng([self.config.seed, 0, 5])
            negatives = (self.unseen_items(users, rng) if self.config.seq_loss == "bce"
                         else rng.integers(1, self.n_items, size=self.config.softmax_negatives))
            inputs = self.history["val"].last(users, self.maxlen)
            self._validation = SequenceBatch(*(torch.as_tensor(a, dtype=torch.long) for a in (inputs, targets, negatives)),
                                             self.query_times("val", users))
        return self._validation

    def validation_size(self) -> int:
        return len(self.validation_queries())

    def validation_batch(self, indices: np.ndarray) -> SequenceBatch:
        q = self.validation_queries()
        idx = torch.as_tensor(indices, dtype=torch.long)
        times = None if q.times is None else (q.times[0][idx], q.times[1][idx])
        return SequenceBatch(q.inputs[idx], q.targets[idx], q.negatives[idx] if self.config.seq_loss == "bce" else q.negatives, times)

    def example_losses(self, batch: SequenceBatch) -> torch.Tensor:
        """The training loss of each query's held-out item, read at the last position of its history."""
        h = self.model.encode_last(batch.inputs, batch.times)
        positives = self.model.embedding.lookup(0, batch.targets)
        if self.config.seq_loss == "bce":
            negatives = self.model.embedding.lookup(0, batch.negatives)
            pos, neg = (h * positives).sum(-1), (h * negatives).sum(-1)
            return F.softplus(-pos) + F.softplus(neg)
        negatives = self.model.embedding.lookup(0, batch.negatives)
        h, pn, nn_ = F.normalize(h, dim=-1), F.normalize(positives, dim=-1), F.normalize(negatives, dim=-1)
        neg = (h @ nn_.T).masked_fill(batch.negatives.unsqueeze(0) == batch.targets.unsqueeze(1), -torch.inf)
        logits = torch.cat([(h * pn).sum(-1, keepdim=True), neg], dim=1) / self.config.temperature
        return F.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long), reduction="none")

    def users_per_chunk(self, n_items: int) -> int:
        """About 16 million scores at once: larger chunks than the default, as each chunk's histories are encoded
        in a few groups of similar length and a group's fixed cost is paid per chunk."""
        return max(1, 2**24 // n_items)

    def query_times(self, split: str, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Item and query times of the ranking queries of `split` (None without timestamps): each position's query
        time is the next item's, the final position's its own (the held-out item's time is not used)."""
        history = self.history[split]
        if history.times is None:
            return None
        item_times = history.last_times(users, self.maxlen)
        return tensors((item_times, np.concatenate([item_times[:, 1:], item_times[:, -1:]], axis=1)))

    @torch.no_grad()
    def rank_scores(self, users: np.ndarray, split: str) -> torch.Tensor:
        inputs = torch.as_tensor(self.history[split].last(np.asarray(users), self.maxlen), dtype=torch.long)
        query = self.model.encode_last(inputs, self.query_times(split, np.asarray(users)))
        items = self.model.item_vectors()
        if self.config.seq_loss == "softmax":
            query, items = F.normalize(query, dim=-1), F.normalize(items, dim=-1)
        return query @ items.T
