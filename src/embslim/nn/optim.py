"""One optimiser for a model holding embslim tables: Adam for dense gradients, SparseAdam for sparse ones.

Tables built with `sparse=True` give sparse gradients (only the rows a batch touched), which
`torch.optim.Adam` rejects; `TableAdam(model.parameters())` splits the parameters it is given by the
kind of gradient they produce and steps both halves, so a plain loop needs no other change:

    opt = embslim.nn.TableAdam(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

With the default `sparse=False` tables a plain `torch.optim.Adam` works as it is.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from embslim.nn.tables import TableSet


def sparse_table_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of `model`'s embslim tables that receive sparse gradients (tables built with sparse=True)."""
    return [p for m in model.modules() if isinstance(m, TableSet) and m.sparse for p in m.embedding.sparse_parameters()]


class TableAdam:
    """Adam on the dense parameters and lazy (sparse) Adam on the rows of sparse tables, as one optimiser.

    `params` are the parameters to train (`model.parameters()`); `model` tells which of them are sparse
    tables (default: parameters whose gradient turns out sparse at the first step are moved to SparseAdam).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, model: nn.Module | None = None) -> None:
        self.params = [p for p in params if p.requires_grad]
        sparse_ids = {id(p) for p in sparse_table_parameters(model)} if model is not None else set()
        self.defaults = {"lr": lr, "betas": betas, "eps": eps}
        self.weight_decay = weight_decay
        self.resolved = model is not None
        self._split({i for i, p in enumerate(self.params) if id(p) in sparse_ids})

    def _split(self, sparse: set[int]) -> None:
        self.sparse_index = sorted(sparse)
        dense = [p for i, p in enumerate(self.params) if i not in sparse]
        self.optimizers: list[torch.optim.Optimizer] = []
        if dense:
            self.optimizers.append(torch.optim.Adam(dense, weight_decay=self.weight_decay, **self.defaults))
        if sparse:
            self.optimizers.append(torch.optim.SparseAdam([self.params[i] for i in self.sparse_index], **self.defaults))

    def step(self) -> None:
        if not self.resolved:  # the first step without a model: sort the parameters by the gradients they got
            sparse = {i for i, p in enumerate(self.params) if p.grad is not None and p.grad.is_sparse}
            if sparse:
                self._split(sparse)
            self.resolved = True
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"resolved": self.resolved, "sparse_index": self.sparse_index, "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resolved = state["resolved"]
        self._split(set(state["sparse_index"]))
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
