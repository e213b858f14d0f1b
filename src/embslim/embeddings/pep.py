"""PEP: learnable soft-threshold pruning of embedding entries (Liu et al., ICLR 2021), to a byte budget.

Search phase. Each entry is served as v' = sign(v) * relu(|v| - sigmoid(s)), with a threshold
logit s learned per field (`granularity="field"`) or per (field, dimension) (`"dimension"`),
applied to the gathered rows only. s is a dense parameter (the trainer's Adam), the tables
are sparse (SparseAdam). As in the reference code, what drives s up is an L2 pull of s toward
zero (`decay`; the reference gets it from its optimiser's weight decay of 1e-5), resisted by
the task loss; Adam moves s about one learning rate a step whatever the pull's size, so
`threshold_lr` scales s's step (s = threshold_init + threshold_lr * p, p trained) for data with
few steps per epoch. An entry is kept while |v| > sigmoid(s).

Defaults, measured on MovieLens-100K CTR (DeepFM, dim 16, about 3,100 planned steps): with the
reference's init -15, pull 1e-5 and s at the dense learning rate, the per-field thresholds stall
near sigmoid(-7) (the task loss outweighs the pull) and prune about 10 % of the entries. Init -10,
`threshold_lr` 20 and `decay` 1e-2 prune to about 16 % of the bytes by mid-training; `decay` 0.1
reaches a 10 % budget by itself in about 500 steps but retrained to a lower AUC (0.747 against
0.756, seed 0). Data with many steps per epoch (Criteo-like) wants a lower `threshold_lr`.

PEP has no exact size control, so the budget is met like the reference's `candidate_p`: after
every step the kept entries' serving bytes (cheapest sparse form, index included) are counted,
and the search ends the first time they fit the budget. If the planned search (`search_end` of
the planned steps) ends first, the smallest mask reached is taken and, by default
(`fit="budget"`), cut to the budget by magnitude within that mask (the note says so);
`fit="reached"` keeps it and reports the bytes reached, which may exceed the budget, as the
issue allows. Without a budget the search runs to `search_end` and keeps what it reached.

Retrain phase (the lottery ticket). The tables are rewound to their initial weights (a copy
kept from build, training memory only), the mask is frozen and applied, and the tables'
optimiser moments are reset; then they train as a plain `MaskedEmbedding`. With `rewind="all"`
(default) the backbone's dense layers are rewound too, as the reference retrains a fresh model:
their initial values are read from the optimisers' parameter groups before the first step
(the only view of them the interface gives) and their moments reset at the rewind;
`rewind="embedding"` leaves them trained. `size_is_final()` is False until the retrain starts,
so the trainer never keeps a search-phase epoch as the result.

Phase, found mask, step counts and the initial weights ride in the module's extra state, so a
checkpoint resumes exactly. Serving is the sparse form of `MaskedEmbedding` (index storage
counted); the note gives the non-zero count too, the measure of the paper's "97-99 % fewer
parameters".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, StepContext, storage_bytes
from embslim.embeddings.masked import MaskedEmbedding
from embslim.embeddings.registry import register_embedding
from embslim.embeddings.sparse_storage import SparseRows
from embslim.errors import ConfigError


@dataclass(frozen=True)
class PEPSettings:
    granularity: str = "field"  # one threshold per field, or "dimension": one per (field, dimension)
    threshold_init: float = -10.0  # initial s (sigmoid 4.5e-5); the reference uses -15 for MovieLens, -150 for Criteo-like data
    threshold_lr: float = 20.0  # s moves this many times the dense learning rate per step
    decay: float = 1e-2  # L2 pull of s toward zero, the force that raises the threshold (reference: 1e-5)
    search_end: float = 0.5  # fraction of the planned steps by which the search phase ends at the latest
    fit: str = "budget"  # search missed the budget: "budget" cuts the mask to it by magnitude, "reached" keeps it
    rewind: str = "all"  # lottery-ticket rewind of "all" initial weights or only the "embedding" tables

    def __post_init__(self) -> None:
        if self.granularity not in ("field", "dimension"):
            raise ConfigError(f"pep granularity must be field or dimension, got {self.granularity!r}")
        if self.fit not in ("budget", "reached"):
            raise ConfigError(f"pep fit must be budget or reached, got {self.fit!r}")
        if self.rewind not in ("all", "embedding"):
            raise ConfigError(f"pep rewind must be all or embedding, got {self.rewind!r}")
        if not 0 < self.search_end <= 1 or self.threshold_lr <= 0 or self.decay < 0:
            raise ConfigError(f"pep needs 0 < search_end <= 1, threshold_lr > 0 and decay >= 0, got search_end={self.search_end} "
                              f"threshold_lr={self.threshold_lr} decay={self.decay}")


def soft_threshold(v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """sign(v) * relu(|v| - threshold): entries below the threshold become zero, the rest shrink toward it.
    (v - clamp(v, -threshold, threshold) gives the same values, but clamp's backward to a tensor bound takes three
    masked passes: 5x slower forward and backward measured on a [4096, 16] lookup.)"""
    return torch.sign(v) * torch.relu(v.abs() - threshold)


def above_threshold(table: torch.Tensor, threshold: torch.Tensor, out: torch.Tensor, chunk_rows: int = 32768) -> None:
    """out = |table| > threshold, in chunks of rows through one small buffer: the search does this to every
    table after every step, and a whole-table |table| would go through memory twice (measured ~2x slower)."""
    buf = torch.empty((min(chunk_rows, len(table)), table.shape[1]), dtype=table.dtype)
    for start in range(0, len(table), chunk_rows):
        stop = min(start + chunk_rows, len(table))
        torch.gt(torch.abs(table[start:stop], out=buf[:stop - start]), threshold, out=out[start:stop])


@register_embedding("pep", settings=PEPSettings, budgeted=True)
class PEPEmbedding(MaskedEmbedding):
    """Soft-threshold search for a mask that fits the budget, then a lottery-ticket retrain of the masked tables."""

    def __init__(self, fields: list[FieldSpec], width: int, settings: PEPSettings, budget_bytes: int | None = None,
                 init_std: float = 0.01) -> None:
        super().__init__(fields, width, init_std)
        self.settings = settings
        self.budget_bytes = budget_bytes
        if budget_bytes is not None:
            self.estimated_keep(budget_bytes)  # a budget below the sparse index is a BudgetError now, not after training
        self.threshold = nn.Parameter(torch.zeros(len(fields), width if settings.granularity == "dimension" else 1))
        self.searching = True
        self.search_steps = 0
        self.reached_budget = False
        self.cut_to_budget = False
        self.initial: list[torch.Tensor] | None = [t.detach().clone() for t in self.tables]
        self.dense_initial: list[torch.Tensor] | None = None
        self.refresh_masks()
        self.smallest_bytes = self.memory_bytes()
        self.found: list[torch.Tensor] = [m.clone() for m in self.masks()]

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: PEPSettings) -> "PEPEmbedding":
        return cls(fields, config.dim, settings, config.budget_bytes, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: PEPSettings, meta: dict) -> "PEPEmbedding":
        module = cls.serving_module(fields, settings, meta)
        module.searching, module.search_steps, module.reached_budget, module.cut_to_budget = False, 0, False, False
        module.smallest_bytes, module.found, module.initial, module.dense_initial = 0, [], None, None
        return module

    # -- thresholds -----------------------------------------------------------------------
    def thresholds(self) -> torch.Tensor:
        """sigmoid(s) per field: [fields, 1] or [fields, width]."""
        return torch.sigmoid(self.settings.threshold_init + self.settings.threshold_lr * self.threshold)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        rows = super().lookup(field, ids)
        if self.served is not None or not self.searching:
            return rows
        return soft_threshold(rows, self.thresholds()[field])

    def aux_loss(self) -> torch.Tensor | None:
        if not self.searching or self.settings.decay == 0:
            return None
        s = self.settings.threshold_init + self.settings.threshold_lr * self.threshold
        return 0.5 * self.settings.decay * s.pow(2).sum()

    @torch.no_grad()
    def soft_masks(self, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The entries the thresholds keep now, |v| > sigmoid(s): written into `out` (one bool tensor per table)
        or into new tensors."""
        thr = self.thresholds()
        out = out if out is not None else [torch.empty(t.shape, dtype=torch.bool) for t in self.tables]
        for i, (table, mask) in enumerate(zip(self.tables, out)):
            above_threshold(table.detach(), thr[i], mask)
        return out

    @torch.no_grad()
    def refresh_masks(self) -> None:
        """Make the mask buffers the thresholds' current mask (the table itself is not touched while searching)."""
        self.soft_masks(self.masks())

    # -- phases -------------------------------------------------------------------------
    def size_is_final(self) -> bool:
        return not self.searching

    def search_end_step(self, total_steps: int) -> int:
        return max(1, round(self.settings.search_end * total_steps))

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """While searching, no entry is frozen (one below its threshold gets no task gradient, yet may regrow);
        before the first step, remember the backbone's initial weights for the rewind."""
        if self.searching:
            if ctx.step == 0 and self.dense_initial is None and self.settings.rewind == "all":
                self.dense_initial = [p.detach().clone() for p in self.dense_parameters(ctx)]
            return
        super().before_optimizer_step(ctx)

    def dense_parameters(self, ctx: StepContext) -> list[torch.Tensor]:
        """The optimisers' parameters other than this module's own, in a fixed order."""
        own = {id(p) for p in self.parameters()}
        return [p for opt in ctx.optimizers for group in opt.param_groups for p in group["params"] if id(p) not in own]

    def on_step_end(self, ctx: StepContext) -> None:
        if not self.searching:
            super().on_step_end(ctx)
            return
        self.search_steps = ctx.step
        self.refresh_masks()
        now = self.memory_bytes()
        if now < self.smallest_bytes:
            self.smallest_bytes = now
            self.found = [m.clone() for m in self.masks()]
        if self.budget_bytes is not None and now <= self.budget_bytes:
            self.reached_budget = True
            self.start_retrain(ctx)
        elif ctx.step >= self.search_end_step(ctx.total_steps):
            self.start_retrain(ctx)

    @torch.no_grad()
    def start_retrain(self, ctx: StepContext) -> None:
        """Freeze the found mask (cut to the budget if the search missed it and `fit="budget"`), rewind to the
        initial weights, reset the optimiser moments of everything rewound."""
        masks = self.found
        if self.budget_bytes is not None and self.settings.fit == "budget" and self.smallest_bytes > self.budget_bytes:
            scores = [t.detach().abs().masked_fill(~m, -1.0) for t, m in zip(self.tables, masks)]
            masks = self.masks_for_budget(scores, self.budget_bytes)
            self.cut_to_budget = True
        for table, start, mask, kept in zip(self.tables, self.initial, masks, self.masks()):
            kept.copy_(mask)
            table.copy_(start * mask)
            ctx.reset_state(table)
        if self.dense_initial is not None:
            params = self.dense_parameters(ctx)
            for p, start in zip(params, self.dense_initial):
                p.copy_(start)
                ctx.reset_state(p)
        self.searching = False
        self.initial = self.dense_initial = None
        self.found = []

    # -- bytes, export, state -------------------------------------------------------------
    def state_bytes(self) -> int:
        """Beyond `MaskedEmbedding`'s: the initial weights kept for the rewind and the found mask, while searching."""
        if self.served is not None:
            return 0
        held = sum(t.numel() * t.element_size() for t in (self.initial or []) + (self.dense_initial or []))
        held += sum(storage_bytes(m.numel(), "uint8") for m in self.found)
        return super().state_bytes() + held

    def stored_rows(self) -> list[SparseRows]:
        """While searching, what is served now: the thresholded tables under the mask of the last step."""
        if self.served is None and self.searching:
            with torch.no_grad():
                thr = self.thresholds()
                return [SparseRows.from_dense(soft_threshold(t.detach(), thr[i]), m) for i, (t, m) in enumerate(zip(self.tables, self.masks()))]
        return super().stored_rows()

    @property
    def note(self) -> str | None:
        if self.served is not None or not hasattr(self, "search_steps"):
            return None
        nnz, total = self.kept(), self.total_entries()
        cut = ", cut to the budget by magnitude within its mask" if self.cut_to_budget else ""
        how = "the search reached the budget" if self.reached_budget else f"the search ended at {self.smallest_bytes:,} bytes{cut}"
        phase = "searching" if self.searching else f"retrained after {self.search_steps} search steps"
        return (f"pep: {nnz:,} non-zero of {total:,} entries ({100 * (1 - nnz / max(total, 1)):.1f}% fewer by non-zero count, "
                f"the paper's measure); {self.memory_bytes():,} bytes with the sparse index; {how}; {phase}")

    def get_extra_state(self) -> Any:
        return {"searching": self.searching, "search_steps": self.search_steps, "reached_budget": self.reached_budget,
                "cut_to_budget": self.cut_to_budget, "smallest_bytes": self.smallest_bytes, "found": self.found,
                "initial": self.initial, "dense_initial": self.dense_initial}

    def set_extra_state(self, state: Any) -> None:
        self.searching, self.search_steps = bool(state["searching"]), int(state["search_steps"])
        self.reached_budget, self.cut_to_budget = bool(state["reached_budget"]), bool(state["cut_to_budget"])
        self.smallest_bytes = int(state["smallest_bytes"])
        self.found = [m.clone() for m in state["found"]]
        self.initial = None if state["initial"] is None else [t.clone() for t in state["initial"]]
        self.dense_initial = None if state["dense_initial"] is None else [t.clone() for t in state["dense_initial"]]
