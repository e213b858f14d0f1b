"""Tables with a keep-mask per entry: the shared training side of the entry-pruning methods.

Each field has a dense float table and a boolean mask of the same shape. Pruned entries are
exactly zero and stay so: their gradients are zeroed before every optimiser step, and when
the mask changes their optimiser moments are reset, so Adam cannot move them. Serving bytes
are those of the cheapest sparse form of each table (`sparse_storage`), which is also what
`export` writes; a module loaded from an artifact serves straight from that form.

A subclass decides the masks (by magnitude on a schedule, by learned thresholds, by drop and
regrow) through `apply_masks`, with `masks_for_budget` to fit a byte budget exactly.
"""
from __future__ import annotations

from copy import deepcopy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import ADAM_STATE_COPIES, FeatureEmbedding, SliceContext, StepContext, storage_bytes
from embslim.embeddings.sparse_storage import SparseRows, cheapest_form, kept_count, mask_bytes
from embslim.errors import BudgetError


class MaskedEmbedding(FeatureEmbedding):
    """Per-field [cardinality, width] tables with keep-masks; serves from sparse storage once loaded."""

    def __init__(self, fields: list[FieldSpec], width: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.fields = list(fields)
        self.width = int(width)
        self.tables = nn.ParameterList([nn.Parameter(torch.randn(f.cardinality, width) * init_std) for f in fields])
        for i, f in enumerate(fields):
            self.register_buffer(f"mask_{i}", torch.ones(f.cardinality, width, dtype=torch.bool))
        self.served: list[SparseRows] | None = None

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask_{i}") for i in range(len(self.fields))]

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        if self.served is not None:
            return self.served[field].lookup(ids)
        return F.embedding(ids, self.tables[field], sparse=True)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables)

    # -- masks ---------------------------------------------------------------------
    def kept(self) -> int:
        return sum(kept_count(m) for m in self.masks())

    def parameter_count(self) -> int:
        """Kept (non-zero) entries: the parameters the pruned model has."""
        if self.served is not None:
            return sum(int(r.tensors["values"].count_nonzero()) for r in self.served)
        return self.kept()

    def total_entries(self) -> int:
        return sum(f.cardinality for f in self.fields) * self.width

    @torch.no_grad()
    def apply_masks(self, masks: list[torch.Tensor], ctx: StepContext | None = None) -> None:
        """Make `masks` the kept entries: zero the weights outside them and reset the optimiser moments
        of every entry whose status changed (pruned ones must not drift, regrown ones start clean)."""
        for table, old, new in zip(self.tables, self.masks(), masks):
            changed = old != new
            old.copy_(new)
            table.mul_(new)
            if ctx is not None and changed.any():
                ctx.reset_state(table, changed)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Zero the gradient of pruned entries so the optimiser never updates them, and note the rows it will touch."""
        self._touched = []
        for table, mask in zip(self.tables, self.masks()):
            grad = table.grad
            if grad is None:
                self._touched.append(None)
                continue
            if grad.is_sparse:
                grad = grad.coalesce()
                rows = grad.indices()[0]
                table.grad = torch.sparse_coo_tensor(grad.indices(), grad.values() * mask[rows], grad.shape, is_coalesced=True,
                                                     check_invariants=False)
            else:  # a dense optimiser moves every row (momentum), not only those with a gradient
                rows = torch.arange(len(mask))
                grad.mul_(mask)
            self._touched.append(rows)

    @torch.no_grad()
    def on_step_end(self, ctx: StepContext) -> None:
        """Re-zero pruned entries of the rows the step touched: an optimiser whose moments were never reset
        (a user's own, in `embslim.nn`) may have moved them; with the trainer's this changes nothing."""
        for table, mask, rows in zip(self.tables, self.masks(), getattr(self, "_touched", [])):
            if rows is not None and len(rows):
                table[rows] *= mask[rows]
        self._touched = []

    @torch.no_grad()
    def top_masks(self, scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
        """Masks keeping the `keep` entries of highest score over all fields together."""
        flat = torch.cat([s.reshape(-1) for s in scores])
        chosen = torch.zeros(len(flat), dtype=torch.bool)
        if keep > 0:
            chosen[torch.topk(flat, min(keep, len(flat)), sorted=False).indices] = True
        return [part.reshape(s.shape) for part, s in zip(chosen.split([s.numel() for s in scores]), scores)]

    @torch.no_grad()
    def masks_for_budget(self, scores: list[torch.Tensor], budget_bytes: int) -> list[torch.Tensor]:
        """The most entries (by score, over all fields; negative scores are never kept) whose cheapest
        serving forms fit `budget_bytes`.

        Serving bytes only grow with the number kept, so bisection on that number finds the exact
        largest one; each probe counts per table from one global ranking, without building masks."""
        sizes = [s.numel() for s in scores]
        order = torch.argsort(torch.cat([s.reshape(-1) for s in scores]), descending=True)
        table_of = torch.repeat_interleave(torch.arange(len(scores)), torch.tensor(sizes))[order]
        pair_of = table_of * self.width + torch.cat([torch.arange(n) % self.width for n in sizes])[order]
        first_use = torch.full((len(scores) * self.width,), len(order)).scatter_reduce(0, pair_of, torch.arange(len(order)), "amin")

        def bytes_keeping(k: int) -> int:
            nnz = torch.bincount(table_of[:k], minlength=len(scores))
            columns = (first_use < k).reshape(len(scores), self.width).sum(dim=1)
            return sum(cheapest_form(f.cardinality, self.width, int(n), int(c))[1] for f, n, c in zip(self.fields, nnz, columns))

        low, high = 0, int(sum(int((s >= 0).sum()) for s in scores))
        while low < high:
            mid = (low + high + 1) // 2
            if bytes_keeping(mid) <= budget_bytes:
                low = mid
            else:
                high = mid - 1
        return self.top_masks(scores, low)

    def estimated_keep(self, budget_bytes: int) -> int:
        """Entries a budget holds when they spread over the tables in proportion to their sizes (a schedule's
        target before any weights exist; the final masks are fitted exactly by `masks_for_budget`)."""
        rows = np.array([f.cardinality for f in self.fields])

        def bytes_at(density: float) -> int:
            return sum(cheapest_form(int(n), self.width, int(round(density * n * self.width)), self.width)[1] for n in rows)

        low, high = 0.0, 1.0
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if bytes_at(mid) <= budget_bytes else (low, mid)
        keep = int(low * rows.sum() * self.width)
        if keep < 1:
            raise BudgetError(f"a budget of {budget_bytes} bytes holds no entry of these tables once the sparse index is paid "
                              f"(about {cheapest_form(int(rows.sum()), self.width, 0, self.width)[1]} bytes): use a hashing method here")
        return keep

    @torch.no_grad()
    def sliced(self, budget_bytes: int, context: SliceContext) -> "MaskedEmbedding | None":
        """The trained tables at a stricter magnitude threshold: of the entries kept, the largest whose
        sparse forms fit `budget_bytes` (pruning again, no retraining)."""
        if not self.size_is_final():
            return None
        scores = [t.detach().abs().masked_fill(~m, -1.0) for t, m in zip(self.tables, self.masks())]
        masks = self.masks_for_budget(scores, budget_bytes)
        if not any(bool(m.any()) for m in masks):
            raise BudgetError(f"a budget of {budget_bytes} bytes holds no entry of these tables once the sparse index is paid")
        copy = deepcopy(self)
        copy.apply_masks(masks)
        context.record.update({"kept_entries": copy.kept(), "source_entries": self.kept()})
        return copy

    # -- bytes and artifacts -----------------------------------------------------------
    def memory_bytes(self, stage: str = "serve") -> int:
        """Serving: the cheapest sparse form of every table. Training: dense tables, Adam's two moments, the masks."""
        if stage == "train":
            return self.memory_bytes("serve") + ADAM_STATE_COPIES * self.weight_bytes() + self.state_bytes()
        if self.served is not None:
            return sum(s.nbytes() for s in self.served)
        return sum(mask_bytes(m) for m in self.masks())

    def index_bytes(self) -> int:
        return 0

    def state_bytes(self) -> int:
        """What training holds beyond the served form and Adam: the dense tables in place of the sparse ones, and the masks."""
        if self.served is not None:
            return 0
        masks = sum(storage_bytes(m.numel(), "uint8") for m in self.masks())
        return self.weight_bytes() + masks - self.memory_bytes("serve")

    def weight_bytes(self) -> int:
        return 0 if self.served is not None else super().weight_bytes()

    def stored_rows(self) -> list[SparseRows]:
        if self.served is not None:
            return self.served
        return [SparseRows.from_dense(t, m) for t, m in zip(self.tables, self.masks())]

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{name}": t for i, rows in enumerate(self.stored_rows()) for name, t in rows.tensors.items()}

    def artifact_meta(self) -> dict:
        return {"width": self.width, "forms": [rows.form for rows in self.stored_rows()]}

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Serve from the stored forms: the dense training tables are dropped."""
        forms = self._forms
        self.served = [SparseRows(form, f.cardinality, self.width, {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)})
                       for i, (f, form) in enumerate(zip(self.fields, forms))]
        self.tables = nn.ParameterList()
        for i in range(len(self.fields)):
            delattr(self, f"mask_{i}")

    @classmethod
    def serving_module(cls, fields: list[FieldSpec], settings, meta: dict) -> "MaskedEmbedding":
        """An empty module of the artifact's shape, to be filled by `load_artifact_tensors`."""
        module = cls.__new__(cls)
        MaskedEmbedding.__init__(module, fields, 0)
        module.width = int(meta["width"])
        module.settings = settings
        module._forms = list(meta["forms"])
        return module
