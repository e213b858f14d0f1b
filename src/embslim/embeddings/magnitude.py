"""Gradual magnitude pruning of embedding entries (Zhu & Gupta, "To prune, or not to prune", 2017).

The strong simple baseline of Tran et al. (arXiv 2406.17335): during training, the entries of
smallest magnitude over all tables together are pruned at `events` evenly spaced steps between
`start` and `end` (fractions of the planned training steps), the kept fraction following
Zhu & Gupta's cubic schedule d_t = d_f + (1 - d_f)(1 - progress)^3, fast at first and gentle at
the end. With a byte budget the last event keeps the most entries whose cheapest sparse forms
(dense kept columns, bitmask or CSR, index storage included) fit it exactly; without one it keeps
`density` of the entries. Epochs before the last event are never kept as the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, StepContext
from embslim.embeddings.masked import MaskedEmbedding
from embslim.embeddings.registry import register_embedding
from embslim.errors import ConfigError


@dataclass(frozen=True)
class MagnitudeSettings:
    start: float = 0.0  # fraction of the planned steps at which pruning begins
    end: float = 0.3  # fraction at which the final size is reached
    events: int = 20  # pruning steps between start and end
    density: float = 1.0  # final fraction of entries kept when no budget is given

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end <= 1:
            raise ConfigError(f"magnitude needs 0 <= start <= end <= 1, got start={self.start} end={self.end}")
        if self.events < 1 or not 0 < self.density <= 1:
            raise ConfigError(f"magnitude needs events >= 1 and 0 < density <= 1, got events={self.events} density={self.density}")


@register_embedding("magnitude", settings=MagnitudeSettings, budgeted=True)
class MagnitudeEmbedding(MaskedEmbedding):
    """Entries pruned by global magnitude on a cubic schedule, to a byte budget or a density."""

    def __init__(self, fields: list[FieldSpec], width: int, settings: MagnitudeSettings, budget_bytes: int | None = None,
                 init_std: float = 0.01) -> None:
        super().__init__(fields, width, init_std)
        self.settings = settings
        self.budget_bytes = budget_bytes
        self.target_keep = self.estimated_keep(budget_bytes) if budget_bytes is not None else round(settings.density * self.total_entries())
        self.events_done = 0 if self.target_keep < self.total_entries() else settings.events

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: MagnitudeSettings) -> "MagnitudeEmbedding":
        return cls(fields, config.dim, settings, config.budget_bytes, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: MagnitudeSettings, meta: dict) -> "MagnitudeEmbedding":
        module = cls.serving_module(fields, settings, meta)
        module.events_done = settings.events
        return module

    def get_extra_state(self) -> Any:
        return {"events_done": self.events_done}

    def set_extra_state(self, state: Any) -> None:
        self.events_done = int(state["events_done"])

    def size_is_final(self) -> bool:
        return self.events_done >= self.settings.events

    def event_step(self, event: int, total_steps: int) -> int:
        """Step after which pruning event `event` (1-based) happens."""
        s = self.settings
        return max(1, round(total_steps * (s.start + (s.end - s.start) * event / s.events)))

    def keep_at(self, event: int) -> int:
        """Entries kept after event `event` on the cubic schedule."""
        remaining = (1 - event / self.settings.events) ** 3
        return round(self.target_keep + (self.total_entries() - self.target_keep) * remaining)

    def on_step_end(self, ctx: StepContext) -> None:
        super().on_step_end(ctx)
        while not self.size_is_final() and ctx.step >= self.event_step(self.events_done + 1, ctx.total_steps):
            self.events_done += 1
            self.prune(self.events_done, ctx)

    @torch.no_grad()
    def prune(self, event: int, ctx: StepContext | None = None) -> None:
        """Keep the largest-magnitude entries the schedule allows at `event`; the last event fits the budget exactly."""
        scores = [t.detach().abs().masked_fill(~m, -1.0) for t, m in zip(self.tables, self.masks())]
        if event == self.settings.events and self.budget_bytes is not None:
            masks = self.masks_for_budget(scores, self.budget_bytes)
        else:
            masks = self.top_masks(scores, self.keep_at(event))
        self.apply_masks(masks, ctx)
