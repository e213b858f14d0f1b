"""How a backbone learns from a dataset and is scored on it: its batches, its loss, its top-k scores.

Tabular backbones (FM, DeepFM, MF, ...) learn pointwise from the dataset's rows (`PointwiseObjective`:
CTR and rating labels, sampled negatives for top-k). Sequence and graph backbones learn from other
shapes (a user's ordered history, the interaction graph) and name their own objective with the class
attribute `objective`; `register_objective` adds one. The trainer only calls this interface, so a new
family of backbones brings one objective file and nothing in the trainer changes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from embslim.data.fields import FeatureTable, PreparedData
from embslim.embeddings.batch import SparseBatch
from embslim.errors import ConfigError
from embslim.models.base import Recommender
from embslim.train.topk import candidate_rows, training_rows, with_negatives


def task_loss(task: str, out: torch.Tensor, label: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The training loss of a task: squared error for ratings, logistic loss on logits otherwise."""
    if task == "rating":
        return F.mse_loss(out, label, reduction=reduction)
    return F.binary_cross_entropy_with_logits(out, label, reduction=reduction)


class Objective:
    """Batches, loss and evaluation scores of one model on one dataset under a `TrainConfig`."""

    def __init__(self, model: Recommender, data: PreparedData, config: Any) -> None:
        self.model, self.data, self.config = model, data, config

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int) -> Iterator[Any]:
        """The training batches of `epoch` (each with `len()`), the same for the same seed and epoch."""
        raise NotImplementedError

    def loss(self, batch: Any) -> torch.Tensor:
        """The task loss of one batch, with the embedding L2 of the rows it used."""
        raise NotImplementedError

    def predict(self, table: FeatureTable) -> np.ndarray:
        """Pointwise outputs (logit or rating) of the rows of `table`."""
        raise ConfigError(f"{type(self.model).__name__} scores users against items only (task topk)")

    def rank_scores(self, users: np.ndarray, split: str) -> torch.Tensor:
        """[len(users), n_items] scores of every catalogue item for each user, as seen before `split`'s item."""
        raise NotImplementedError

    def users_per_chunk(self, n_items: int) -> int:
        """How many users `rank_scores` takes at once: about four million scores."""
        return max(1, 2**22 // n_items)

    # Validation examples, for searches that learn on validation loss (DNIS's alpha step, its loss-increase score).
    def validation_size(self) -> int:
        """How many validation examples `validation_batch` indexes."""
        raise NotImplementedError

    def validation_batch(self, indices: np.ndarray) -> Any:
        raise NotImplementedError

    def example_losses(self, batch: Any) -> torch.Tensor:
        """Task loss of each example of a batch (no regulariser): [len(batch)]."""
        raise NotImplementedError

    def example_blocks(self, indices: np.ndarray, field: str, starts: np.ndarray) -> np.ndarray | None:
        """For a field with one value per example, the block (by `starts`, the first id of each block) of each
        validation example's value; None where an example reads many values of the field (bags, sequences)."""
        return None


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def wrap(cls: type[Objective]) -> type[Objective]:
        OBJECTIVES[name] = cls
        return cls
    return wrap


def create_objective(model: Recommender, data: PreparedData, config: Any) -> Objective:
    name = getattr(model, "objective", "pointwise")
    if name == "pointwise" and getattr(config, "pair_loss", ""):
        name = "pairwise"  # a pointwise model (MF) trained with BPR or sampled softmax instead
    if name not in OBJECTIVES:
        raise ConfigError(f"{type(model).__name__} needs objective {name!r}, which is not registered; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](model, data, config)


L2_MODES = ("mean", "mba")


def l2_of_rows(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared norm of the embedding rows a batch used, summed over fields."""
    return sum(v.pow(2).sum(dim=-1).mean() for v in vectors)


def mba_l2(vectors: list[torch.Tensor], ids: torch.Tensor, counts: list[torch.Tensor]) -> torch.Tensor:
    """Mini-batch aware L2 (Zhou et al., KDD 2018, the DIN paper): sum over the distinct ids each single-valued field
    shows in the batch of ||row||^2 / (the id's training frequency). Only rows a batch reads are penalised, and rare
    ids, whose rows few examples pin down, are held closer to zero than frequent ones. `vectors[j]` are the rows of
    the ids in `ids[:, j]` and `counts[j]` that field's training counts (at least 1)."""
    total = torch.zeros(())
    for j, (rows, count) in enumerate(zip(vectors, counts)):
        column = ids[:, j]
        _, inverse, in_batch = torch.unique(column, return_inverse=True, return_counts=True)
        weight = 1.0 / (count[column] * in_batch[inverse].to(count.dtype))  # each distinct id once: its repeats share the weight
        total = total + (weight * rows.pow(2).sum(dim=-1)).sum()
    return total


@register_objective("pointwise")
class PointwiseObjective(Objective):
    """Rows with labels: CTR clicks, ratings, or top-k positives plus `negatives` sampled items per positive.

    Top-k scores come from the model's `retrieval(users)` (query and item vectors, one matrix product) when
    it has one, otherwise from running the model over every (user, item) pair.
    """

    def epoch_table(self, epoch: int) -> FeatureTable:
        if self.data.task == "topk":
            return training_rows(self.data, self.config.negatives, np.random.default_rng([self.config.seed, epoch, 1]))
        return self.data.split("train")

    def steps_per_epoch(self) -> int:
        rows = len(self.data.splits["train"]) * (1 + self.config.negatives if self.data.task == "topk" else 1)
        return -(-rows // self.config.batch_size)

    def batches(self, epoch: int) -> Iterator[SparseBatch]:
        table = self.epoch_table(epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(table))
        for start in range(0, len(order), self.config.batch_size):
            yield SparseBatch.from_table(table, order[start:start + self.config.batch_size])

    def loss(self, batch: SparseBatch) -> torch.Tensor:
        out, vectors = self.model.forward_train(batch)
        loss = task_loss(self.data.task, out, batch.label)
        if self.config.embedding_l2 and self.config.embedding_l2_mode == "mba":
            single = [i for i, f in enumerate(self.model.embedding.fields) if not f.multivalued]
            loss = loss + self.config.embedding_l2 * mba_l2([vectors[i] for i in single], batch.ids, self.training_counts(single))
        elif self.config.embedding_l2:
            loss = loss + self.config.embedding_l2 * l2_of_rows(vectors)
        return loss

    def training_counts(self, fields: list[int]) -> list[torch.Tensor]:
        """Training frequency of every id of these embedding fields (at least 1), kept on the model's device."""
        if getattr(self, "_counts", None) is None:
            device = next(self.model.parameters()).device
            self._counts = {i: torch.as_tensor(f.counts, dtype=torch.float32, device=device).clamp(min=1)
                            for i, f in enumerate(self.model.embedding.fields)}
        return [self._counts[i] for i in fields]

    def validation_table(self) -> FeatureTable:
        """The validation rows; for top-k each held-out positive with `negatives` sampled items (fixed per seed)."""
        if getattr(self, "_validation", None) is None:
            val = self.data.split("val")
            if self.data.task == "topk":
                val = with_negatives(val, self.data.items, self.config.negatives, np.random.default_rng([self.config.seed, 0, 2]))
            self._validation = val
        return self._validation

    def validation_size(self) -> int:
        return len(self.validation_table())

    def validation_batch(self, indices: np.ndarray) -> SparseBatch:
        return SparseBatch.from_table(self.validation_table(), indices)

    def example_losses(self, batch: SparseBatch) -> torch.Tensor:
        return task_loss(self.data.task, self.model(batch), batch.label, reduction="none")

    def example_blocks(self, indices: np.ndarray, field: str, starts: np.ndarray) -> np.ndarray | None:
        table = self.validation_table()
        if field in table.bags:
            return None
        return np.searchsorted(starts, table.ids[indices, table.single_index(field)], side="right") - 1

    @torch.no_grad()
    def predict(self, table: FeatureTable) -> np.ndarray:
        size = self.config.eval_batch_size
        out = [self.model(SparseBatch.from_table(table, np.arange(s, min(s + size, len(table))))) for s in range(0, len(table), size)]
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def users_per_chunk(self, n_items: int) -> int:
        if getattr(self.model, "retrieval", None) is not None:
            return super().users_per_chunk(n_items)
        return max(1, self.config.eval_batch_size * 4 // n_items)

    @torch.no_grad()
    def rank_scores(self, users: np.ndarray, split: str) -> torch.Tensor:
        retrieval = getattr(self.model, "retrieval", None)
        if retrieval is not None:
            queries, items = retrieval(torch.as_tensor(users, dtype=torch.long))
            return queries @ items.T
        held = self.data.split(split)
        ucol = held.single_index(self.data.user_field)
        where = np.full(int(held.ids[:, ucol].max()) + 1, -1, dtype=np.int64)
        where[held.ids[:, ucol]] = np.arange(len(held))
        n_items = len(self.data.items.label)
        rows = held.take(where[users])
        return torch.as_tensor(self.predict(candidate_rows(rows, self.data.items))).reshape(len(users), n_items)


def seen_matrix(data: PreparedData, splits: tuple[str, ...]) -> sp.csr_matrix:
    """Users x items matrix of interactions in the given splits."""
    all_users = data.row_users()
    rows = np.concatenate([data.splits[s] for s in splits])
    users, items = all_users[rows], data.row_items()[rows]
    shape = (int(all_users.max()) + 1, len(data.items.label))
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (users, items)), shape=shape)
