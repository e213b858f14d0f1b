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
from pathlib import Path

import numpy as np
import torch

from embslim.data.fields import PreparedData
from embslim.embeddings.blockwise import check_precision, layout_bytes
from embslim.embeddings.dnis import DNISEmbedding
from embslim.errors import ConfigError
from embslim.models.base import Recommender
from embslim.search.importance import cached_loss_increase, frequency_fill, ranking
from embslim.train.objectives import create_objective
from embslim.train.trainer import TrainConfig


SCORES = ("loss", "magnitude")
FILL_RANKS = ("below", "scaled")
NETWORK_STARTS = ("auto", "start", "fresh")
FINE_TUNE_SOURCES = ("auto", "search", "full")


@dataclass(frozen=True)
class DNISConfig:
    """Search settings: one rule for every backbone and task (no per-model table)."""

    blocks: int | tuple[float, ...] = 6  # frequency blocks per field, or fractions of its rows
    l1: float = 1e-5  # L1 penalty on alpha
    alpha_lr: float = 0.01
    search_epochs: int = 2
    frequency_exponent: float = 0.25  # pruning score = importance * block frequency ** this
    min_dims: int = 1  # dimensions every block keeps before the rest compete for the budget
    fine_tune: bool = True  # retrain from the pruned searched weights (False: from scratch)
    fine_tune_network: str = "auto"  # fine_tune: the network starts from the retrain's start ("start") or fresh ("fresh", only the values carry over); "auto": fresh for a rating or CTR model started from the searched values, start otherwise
    fine_tune_from: str = "auto"  # fine_tune: "search" (e * alpha and the network searched with it), "full" (the (aligned) full model's weights under the searched mask), or "auto" (full where the search aligned each field to the one direction the backbone reads it, LR; search elsewhere)
    prune_during_search: bool = False  # cubic schedule towards the budget inside the search
    align: bool = True  # rotate to principal axes first where the backbone allows it (see embslim.search.align)
    threshold: float | None = None  # keep (block, dim) pairs with importance >= this instead of fitting the budget
    score: str = "loss"  # budget pruning ranks by: "loss" (validation loss increase per byte) or "magnitude" (E|e*alpha|)
    fill: bool = True  # "loss": spend budget the evidence leaves by MDE's power law of block frequency (False: leave it unspent)
    fill_temperature: float = 0.3  # "loss" with fill: MDE's power of block frequency that shapes the fill
    fill_rank: str = "scaled"  # "loss" with fill: the prior "scaled" to the evidence's units, each pair scoring the larger of the two, or ranked "below" every pair with evidence
    noise_z: float = 2.0  # "loss": confidence bound, in standard errors, a pair's loss increase must clear
    importance_rows: int = 100_000  # "loss": validation rows measured (a seeded sample beyond this)
    search_trains_weights: bool = True  # False: only alpha moves during the search (one-pass data, where a second pass memorises)
    search_holdout: float = 0.0  # rating/CTR: fit alpha and the scores on this share of training rows, not validation (0: validation)
    retrain: bool = True  # False: serve the pruned start (fine_tune_from's) as it is, no retrain (one-pass data, with search_trains_weights=False)
    precision: str = "fp32"  # how the pruned table stores its values: fp32, fp16 or int8 (row-wise, fp16 scale and bias); pruning counts those bytes and the retrain trains through the rounding

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"DNIS score must be one of {SCORES}, got {self.score!r}")
        if self.fill_rank not in FILL_RANKS:
            raise ConfigError(f"DNIS fill_rank must be one of {FILL_RANKS}, got {self.fill_rank!r}")
        if self.fine_tune_from not in FINE_TUNE_SOURCES:
            raise ConfigError(f"DNIS fine_tune_from must be one of {FINE_TUNE_SOURCES}, got {self.fine_tune_from!r}")
        if not self.retrain and not self.fine_tune:
            raise ConfigError("DNIS retrain=false serves the pruned searched model: it needs fine_tune=true (a fresh initialisation is untrained)")
        if self.fine_tune_network not in NETWORK_STARTS:
            raise ConfigError(f"DNIS fine_tune_network must be one of {NETWORK_STARTS}, got {self.fine_tune_network!r}")
        if not self.retrain and self.fine_tune_network == "fresh":
            raise ConfigError("DNIS retrain=false serves the pruned searched model: it needs its network (fine_tune_network=fresh is untrained)")
        if not 0 <= self.search_holdout < 1:
            raise ConfigError(f"DNIS search_holdout must be in [0, 1), got {self.search_holdout}")
        check_precision(self.precision)


class AlphaUpdate:
    """One step of alpha on a validation loss, and alpha's pruning mask: the part of the search that
    `AlphaStep` (embslim's trainer) and `embslim.nn.DNISSearch` (a user's own loop) share.

    The step: loss + l1 * sum|alpha|, alpha's gradient divided by its mean absolute value within
    each block (so frequent blocks do not dominate), Adam, then a clamp to [0, 1].
    """

    def __init__(self, embedding: DNISEmbedding, config: DNISConfig) -> None:
        self.embedding, self.config = embedding, config
        self.optimizer = torch.optim.Adam([embedding.alpha], lr=config.alpha_lr)
        self.mask = (embedding.alpha.detach() > 0).float()  # a resumed search keeps what it pruned

    def step(self, loss: torch.Tensor) -> None:
        """Update alpha from the validation `loss` (a scalar whose graph reaches alpha)."""
        alpha = self.embedding.alpha
        loss = loss + self.config.l1 * alpha.abs().sum()
        (grad,) = torch.autograd.grad(loss, [alpha])
        grad = grad / (grad.abs().mean(dim=1, keepdim=True) + 1e-12)
        alpha.grad = grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.embedding.clamp_alpha()

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Keep pruned (block, dimension) pairs at alpha = 0."""
        self.embedding.alpha.mul_(self.mask)

    def mask_to(self, layouts: dict) -> None:
        """From now on, only the (block, dimension) pairs of `layouts` may be non-zero."""
        mask = torch.zeros_like(self.mask)
        base = 0
        for f in self.embedding.fields:
            for b, cols in enumerate(layouts[f.name].cols):
                mask[base + b, cols] = 1.0
            base += len(layouts[f.name].cols)
        self.mask = mask


class AlphaStep:
    """Trainer callback: one validation step of alpha (`AlphaUpdate`) after every training step.

    With `budget_bytes` (and `DNISConfig.prune_during_search`) it also prunes gradually:
    at PRUNE_EVENTS evenly spaced steps over the first PRUNE_SPAN of the search, the
    dimensions outside a budget that shrinks cubically from the full table to
    `budget_bytes` get alpha = 0 for good, so the network adapts to each loss before
    the next and the search ends at the target layout.
    """

    PRUNE_EVENTS = 8
    PRUNE_SPAN = 0.75

    def __init__(self, model: Recommender, data: PreparedData, config: DNISConfig, batch_size: int, seed: int,
                 budget_bytes: int | None = None, train: TrainConfig | None = None) -> None:
        self.model, self.config = model, config
        self.budget_bytes = budget_bytes
        self.events: dict[int, int] | None = None
        self.embedding: DNISEmbedding = model.embedding
        self.update = AlphaUpdate(self.embedding, config)
        self.data = data
        self.objective = create_objective(model, data, train or TrainConfig(batch_size=batch_size, seed=seed))
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, 99])
        self.order, self.cursor = self.rng.permutation(self.objective.validation_size()), 0

    def state_dict(self) -> dict:
        """Alpha's optimiser, the validation batch order and the pruning mask, for checkpoints."""
        return {"optimizer": self.update.optimizer.state_dict(), "rng": self.rng.bit_generator.state, "order": self.order,
                "cursor": self.cursor, "mask": self.update.mask}

    def load_state_dict(self, state: dict) -> None:
        self.update.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.order, self.cursor, self.update.mask = state["order"], state["cursor"], state["mask"]

    def next_batch(self):
        if self.cursor >= len(self.order):
            self.order, self.cursor = self.rng.permutation(self.objective.validation_size()), 0
        rows = self.order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return self.objective.validation_batch(rows)

    def on_batch_end(self, trainer, step: int) -> None:
        batch = self.next_batch()
        self.update.step(self.objective.example_losses(batch).mean())
        if self.budget_bytes is not None:
            if self.events is None:
                self.events = self.prune_schedule(trainer)
            if step in self.events:
                self.prune_to(self.events[step])
            self.update.apply_mask()

    def prune_schedule(self, trainer) -> dict[int, int]:
        """Global step -> budget of each pruning event."""
        steps = self.config.search_epochs * trainer.steps_per_epoch()
        everything = {f.name: np.ones((n, self.embedding.width)) for f, n in zip(self.embedding.fields, self.embedding.field_blocks)}
        start = layout_bytes(layout_for_budget(self.embedding, 2**62, self.config, everything), self.embedding.width, self.config.precision)
        n = self.PRUNE_EVENTS
        return {max(1, round(j / n * self.PRUNE_SPAN * steps)): int(self.budget_bytes + (start - self.budget_bytes) * (1 - j / n) ** 3)
                for j in range(1, n + 1)}

    @torch.no_grad()
    def prune_to(self, budget_bytes: int) -> None:
        scores = pruning_scores(self.model, self.data, self.config)
        self.update.mask_to(layout_for_budget(self.embedding, budget_bytes, self.config, scores))


def pruning_scores(model: Recommender, data: PreparedData, config: DNISConfig = DNISConfig(), seed: int = 0,
                   folder: Path | None = None) -> dict[str, np.ndarray]:
    """Per field, [blocks, width]: what budget pruning ranks (block, dimension) pairs by (see `rank_pairs`),
    the loss increases measured on `data`'s validation split (kept in and read from the search `folder`, if given)."""
    lower = cached_loss_increase(model, data, config.noise_z, config.importance_rows, seed, folder)[0] if config.score == "loss" else None
    return rank_pairs(model.embedding, config, lower)


def rank_pairs(emb: DNISEmbedding, config: DNISConfig, lower: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Per field, [blocks, width]: the pruning score of each (block, dimension) pair.

    "loss": `lower`, the validation loss increase of dropping the pair (lower confidence bound, see
    `embslim.search.importance`), per byte, and below those, when `fill`, the rest by MDE's power law of
    block frequency; "magnitude": E|e * alpha| times block frequency to `frequency_exponent` (`lower` unused).
    """
    from embslim.search.prune import value_per_byte

    starts = emb.field_block_starts()
    counts = {f.name: f.counts for f in emb.fields}
    if config.score == "loss":
        fill = frequency_fill(starts, counts, emb.importance(), lower, config.fill_temperature) if config.fill else None
        return ranking(lower, starts, fill, scaled=config.fill_rank == "scaled")
    return value_per_byte(emb.importance(), starts, counts, config.frequency_exponent)


def layout_for_budget(embedding: DNISEmbedding, budget_bytes: int, config: DNISConfig, scores: dict[str, np.ndarray]) -> dict:
    """Prune a searched DNIS embedding to `budget_bytes` by `scores` (see `pruning_scores`):
    per-field block layouts for `BlockwiseEmbedding`."""
    from embslim.search.prune import prune_to_budget

    return prune_to_budget(scores, embedding.field_block_starts(), embedding.width, budget_bytes, config.min_dims, config.precision)


def layout_for_threshold(embedding: DNISEmbedding, threshold: float) -> dict:
    """Prune a searched DNIS embedding by a fixed importance threshold: the pairs whose E|e_v * alpha| is at least it."""
    from embslim.search.prune import prune_by_threshold

    return prune_by_threshold(embedding.importance(), embedding.field_block_starts(), threshold)


def warm_start_from(search_model: Recommender, full_model: Recommender) -> None:
    """Copy the trained full model into the search model (alpha stays at 1)."""
    state = copy.deepcopy(full_model.state_dict())
    missing, unexpected = search_model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("embedding.") for k in missing):
        raise RuntimeError(f"cannot warm-start DNIS from the full model: missing {missing}, unexpected {unexpected}")


def search_train_config(train_config, dnis: DNISConfig):
    """The trainer settings of the search phase: a fixed number of epochs, no early stop; a search
    that prunes as it goes ends with its last state (the one at the target budget)."""
    frozen = {} if dnis.search_trains_weights else {"lr": 0.0, "table_lr": 0.0, "table_optimizer": "sgd", "weight_decay": 0.0, "embedding_l2": 0.0}
    return replace(train_config, epochs=dnis.search_epochs, patience=dnis.search_epochs + 1,
                   keep_best=train_config.keep_best and not dnis.prune_during_search, **frozen)


@torch.no_grad()
def pruned_values(search: DNISEmbedding, layouts: dict) -> list[torch.Tensor]:
    """Initial values of a blockwise embedding taken from the searched e * alpha (for fine-tuning):
    one [rows, kept] tensor per block in field and block order (`BlockwiseEmbedding.load_block_values`)."""
    table, alpha = search.tables[0], search.alpha
    offsets = getattr(search, f"offsets_{search.width}")
    parts, block_base = [], 0
    for i, f in enumerate(search.fields):
        lay = layouts[f.name]
        for s, (a, b) in enumerate(zip(lay.starts[:-1], lay.starts[1:])):
            cols = torch.tensor(lay.cols[s], dtype=torch.int64)
            parts.append(table[offsets[i] + a: offsets[i] + b][:, cols] * alpha[block_base + s, cols])
        block_base += len(lay.cols)
    return parts
