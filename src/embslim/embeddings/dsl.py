"""Dynamic sparse training of embedding entries at a fixed parameter budget (DSL; Wang et al., arXiv 2402.02855).

The tables are sparse from the first step to the last, at the density the budget allows: the
initial masks are random (scores drawn per entry) and fitted to the byte budget exactly by
`masks_for_budget`, which fixes each table's number of kept entries. Every `interval` steps,
until `stop` of the planned steps, each table exchanges some of its entries: the
`drop_fraction` of its kept entries of smallest magnitude are pruned, and as many entries that
were pruned before the update are regrown, those with the largest gradient magnitude. The
fraction decays on a cosine from `drop_fraction` to zero at `stop` (RigL's schedule; the
reference code anneals over the whole run). Regrown entries start at zero with zero optimiser
moments (`apply_masks` resets them).

Defaults for ML-100K CTR (batch 512: 157 steps an epoch, 20 epochs planned, early stopping after
2 epochs without gain, usually near epoch 9): `interval` 100 gives about 1.5 exchanges an epoch,
the reference's MultVAE setting. `stop` 0.3 ends the exchanges by epoch 6, as magnitude's schedule
does; with 0.75 (epoch 15) early stopping often ended a run while a sixth or more of the kept
entries were still exchanged (and restarted from zero) at each update. DeepFM dim 16, seed 0, best
validation AUC at budgets 0.5/0.2/0.1: 0.7936/0.7879/0.7755 with stop 0.3, 0.7853/0.7798/0.7854
with 0.75 (that 0.1 run trained all 20 epochs). The size is constant, so `size_is_final` is always true.

Kept counts per table never change, so serving bytes never grow: the sparse forms' bytes depend
on the count alone, and the dense form's only shrink when a column empties. A table whose
exchange would need a new column of a partial dense form (only tiny tables at high density can
be stored so) skips that update, so the bytes fitted at build hold to the end.

Gradients are sparse (SparseAdam): one step reaches only the rows its batch touches. The
regrowth score of an entry is therefore |sum of its gradients over all steps since the last
update|, the gradient of the loss over the whole interval: every row seen in the interval gets
a score, rows never seen score zero and come last. Ties (all zero scores among the untouched
rows) are broken by a random order seeded per update, so resuming repeats them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, StepContext, storage_bytes
from embslim.embeddings.masked import MaskedEmbedding
from embslim.embeddings.registry import register_embedding
from embslim.embeddings.sparse_storage import kept_count, mask_bytes
from embslim.errors import ConfigError


@dataclass(frozen=True)
class DSLSettings:
    interval: int = 100  # optimiser steps between drop/regrow updates (reference: 100 for MultVAE, 2000-3000 elsewhere)
    drop_fraction: float = 0.5  # fraction of each table's kept entries exchanged at the first update (reference death rate 0.5)
    stop: float = 0.3  # fraction of the planned steps after which the masks stay fixed (see the module notes)
    density: float = 0.5  # fraction of entries kept when no budget is given (reference default)

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ConfigError(f"dsl needs interval >= 1 step, got {self.interval}")
        if not 0 <= self.drop_fraction <= 1 or not 0 <= self.stop <= 1:
            raise ConfigError(f"dsl needs 0 <= drop_fraction <= 1 and 0 <= stop <= 1, got drop_fraction={self.drop_fraction} stop={self.stop}")
        if not 0 < self.density <= 1:
            raise ConfigError(f"dsl needs 0 < density <= 1, got {self.density}")


def largest_first(values: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the `n` largest of `values` (>= 0 where eligible), ties by position: what a stable descending
    argsort's first `n` are, without sorting the whole table. Regrowth candidates are mostly zero (entries no
    gradient reached), so only the positive ones are sorted and the zeros are taken in position order."""
    positive = (values > 0).nonzero().squeeze(1)
    ranked = positive[torch.argsort(values[positive], descending=True, stable=True)]
    if len(ranked) >= n:
        return ranked[:n]
    zeros = (values == 0).nonzero().squeeze(1)[:n - len(ranked)]
    return torch.cat([ranked, zeros])


@register_embedding("dsl", settings=DSLSettings, budgeted=True)
class DSLEmbedding(MaskedEmbedding):
    """Entries kept at a constant count per table, exchanged by magnitude (drop) and gradient (regrow) on a schedule."""

    def __init__(self, fields: list[FieldSpec], width: int, settings: DSLSettings, budget_bytes: int | None = None,
                 init_std: float = 0.01) -> None:
        super().__init__(fields, width, init_std)
        self.settings = settings
        self.budget_bytes = budget_bytes
        self.seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.updates_done = 0
        gen = torch.Generator().manual_seed(self.seed)
        draws = [torch.rand(t.shape, generator=gen) for t in self.tables]
        if budget_bytes is not None:
            self.estimated_keep(budget_bytes)  # a budget that holds no entry is a BudgetError
            masks = self.masks_for_budget(draws, budget_bytes)
        else:
            masks = self.top_masks(draws, round(settings.density * self.total_entries()))
        self.apply_masks(masks)
        self.table_bytes = [mask_bytes(m) for m in self.masks()]
        for i, t in enumerate(self.tables):
            self.register_buffer(f"score_{i}", torch.zeros_like(t, requires_grad=False))

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: DSLSettings) -> "DSLEmbedding":
        return cls(fields, config.dim, settings, config.budget_bytes, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: DSLSettings, meta: dict) -> "DSLEmbedding":
        module = cls.serving_module(fields, settings, meta)
        module.seed, module.updates_done, module.table_bytes = 0, 0, []
        return module

    def get_extra_state(self) -> Any:
        return {"seed": self.seed, "updates_done": self.updates_done, "table_bytes": list(self.table_bytes)}

    def set_extra_state(self, state: Any) -> None:
        self.seed, self.updates_done = int(state["seed"]), int(state["updates_done"])
        self.table_bytes = [int(b) for b in state["table_bytes"]]

    def scores(self) -> list[torch.Tensor]:
        return [getattr(self, f"score_{i}") for i in range(len(self.fields))]

    def state_bytes(self) -> int:
        """The masked tables' training state plus one fp32 gradient accumulator per entry."""
        if self.served is not None:
            return 0
        return super().state_bytes() + sum(storage_bytes(s.numel()) for s in self.scores())

    # -- schedule --------------------------------------------------------------------
    def end_step(self, total_steps: int) -> float:
        return self.settings.stop * total_steps

    def update_due(self, step: int, total_steps: int) -> bool:
        """Whether masks are exchanged after step `step` (1-based): every `interval` steps before `stop`."""
        return step % self.settings.interval == 0 and step < self.end_step(total_steps)

    def fraction_at(self, step: int, total_steps: int) -> float:
        """Fraction of kept entries exchanged at `step`: `drop_fraction` decayed on a cosine to zero at `stop`."""
        progress = min(1.0, step / max(self.end_step(total_steps), 1e-9))
        return self.settings.drop_fraction * 0.5 * (1 + math.cos(math.pi * progress))

    @torch.no_grad()
    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Add this step's gradients to the regrowth scores (pruned entries included), then mask them."""
        upcoming = -(-(ctx.step + 1) // self.settings.interval) * self.settings.interval
        if upcoming < self.end_step(ctx.total_steps):
            for table, score in zip(self.tables, self.scores()):
                grad = table.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    grad = grad.coalesce()
                    score.index_add_(0, grad.indices()[0], grad.values())
                else:
                    score.add_(grad)
        super().before_optimizer_step(ctx)

    def on_step_end(self, ctx: StepContext) -> None:
        super().on_step_end(ctx)
        if self.update_due(ctx.step, ctx.total_steps):
            self.updates_done += 1
            self.exchange(self.fraction_at(ctx.step, ctx.total_steps), ctx)

    @torch.no_grad()
    def exchange(self, fraction: float, ctx: StepContext | None = None) -> None:
        """Per table: prune the `fraction` of kept entries of smallest magnitude, regrow as many of the
        previously pruned entries with the largest accumulated gradient, and clear the scores."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.updates_done)
        masks = []
        for i, (table, mask, score) in enumerate(zip(self.tables, self.masks(), self.scores())):
            kept = kept_count(mask)
            n = min(round(fraction * kept), mask.numel() - kept)
            new = mask.clone()
            if n > 0:
                flat = new.view(-1)
                magnitude = table.detach().abs().masked_fill(~mask, math.inf).view(-1)
                flat[torch.topk(magnitude, n, largest=False, sorted=False).indices] = False
                order = torch.randperm(mask.numel(), generator=gen).to(mask.device)
                growth = score.abs().masked_fill(mask, -1.0).view(-1)[order]
                flat[order[largest_first(growth, n)]] = True
                if mask_bytes(new) > self.table_bytes[i]:
                    new = mask
            masks.append(new)
            score.zero_()
        self.apply_masks(masks, ctx)
