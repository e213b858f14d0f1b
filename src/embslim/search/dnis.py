"""DNIS search: bi-level training of the soft selection layer, then prune and retrain.

Search alternates, after each training step of embeddings and network (training
loss, the trainer's optimisers), one step of alpha on a validation batch
(first-order DARTS approximation): loss + l1 * sum|alpha|, alpha's gradient divided
by its mean absolute value within each block so that frequent blocks do not dominate,
Adam, then a clamp to [0, 1]. The warm start with alpha fixed is the trained full
model itself (alpha = 1 reproduces it exactly), so no epochs are spent twice.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from embslim.data.fields import PreparedData
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.dnis import DNISEmbedding
from embslim.models.base import Recommender


@dataclass(frozen=True)
class DNISConfig:
    blocks: int | tuple[float, ...] = 6
    l1: float = 1e-5
    alpha_lr: float = 0.01
    search_epochs: int = 2
    frequency_exponent: float = 0.25
    min_dims: int = 1
    fine_tune: bool = True


class AlphaStep:
    """Trainer callback: one validation step of alpha after every training step."""

    def __init__(self, model: Recommender, data: PreparedData, config: DNISConfig, batch_size: int, seed: int) -> None:
        self.model, self.config = model, config
        self.embedding: DNISEmbedding = model.embedding
        self.optimizer = torch.optim.Adam([self.embedding.alpha], lr=config.alpha_lr)
        self.val = data.split("val")
        self.task = data.task
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, 99])
        self.order, self.cursor = self.rng.permutation(len(self.val)), 0
        self.slices = self.embedding.block_slices()

    def next_batch(self) -> SparseBatch:
        if self.cursor >= len(self.order):
            self.order, self.cursor = self.rng.permutation(len(self.val)), 0
        rows = self.order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return SparseBatch.from_table(self.val, rows)

    def on_batch_end(self, trainer, step: int) -> None:
        batch = self.next_batch()
        out = self.model(batch)
        loss = F.mse_loss(out, batch.label) if self.task == "rating" else F.binary_cross_entropy_with_logits(out, batch.label)
        alpha = self.embedding.alpha
        loss = loss + self.config.l1 * alpha.abs().sum()
        (grad,) = torch.autograd.grad(loss, [alpha])
        grad = grad / (grad.abs().mean(dim=1, keepdim=True) + 1e-12)
        alpha.grad = grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.embedding.clamp_alpha()


def layout_for_budget(embedding: DNISEmbedding, budget_bytes: int, config: DNISConfig = DNISConfig()) -> dict:
    """Prune a searched DNIS embedding to `budget_bytes`: per-field block layouts for `BlockwiseEmbedding`."""
    from embslim.search.prune import prune_to_budget, value_per_byte

    starts = embedding.field_block_starts()
    counts = {f.name: f.counts for f in embedding.fields}
    scores = value_per_byte(embedding.importance(), starts, counts, config.frequency_exponent)
    return prune_to_budget(scores, starts, embedding.width, budget_bytes, config.min_dims)


def warm_start_from(search_model: Recommender, full_model: Recommender) -> None:
    """Copy the trained full model into the search model (alpha stays at 1)."""
    state = copy.deepcopy(full_model.state_dict())
    missing, unexpected = search_model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("embedding.") for k in missing):
        raise RuntimeError(f"cannot warm-start DNIS from the full model: missing {missing}, unexpected {unexpected}")


def search_train_config(train_config, dnis: DNISConfig):
    """The trainer settings of the search phase: a fixed number of epochs, no early stop."""
    return replace(train_config, epochs=dnis.search_epochs, patience=dnis.search_epochs + 1)


@torch.no_grad()
def pruned_values(search: DNISEmbedding, layouts: dict) -> torch.Tensor:
    """Initial flat values of a blockwise embedding taken from the searched e * alpha (for fine-tuning)."""
    table, alpha = search.tables[0], search.alpha
    offsets = getattr(search, f"offsets_{search.width}")
    parts, block_base = [], 0
    for i, f in enumerate(search.fields):
        lay = layouts[f.name]
        for s, (a, b) in enumerate(zip(lay.starts[:-1], lay.starts[1:])):
            cols = torch.tensor(lay.cols[s], dtype=torch.int64)
            parts.append((table[offsets[i] + a: offsets[i] + b][:, cols] * alpha[block_base + s, cols]).reshape(-1))
        block_base += len(lay.cols)
    return torch.cat(parts).unsqueeze(1) if parts else torch.zeros(1, 1)
