"""Optimisers for embedding tables and the bytes of state each keeps.

Tables take sparse gradients (only the rows a batch touched), so their optimiser is chosen apart from the
dense network's Adam (`--table-optimizer`):

- `adam`: lazy Adam (torch's SparseAdam update, applied by `LazyAdam` without sparse-tensor passes), two floats of state per value.
- `rowwise-adagrad`: Adagrad with one accumulator per row (the mean of the squared gradient over the row),
  what production CTR training uses (FBGEMM's EXACT_ROWWISE_ADAGRAD): one float per row, 1/(2d) of Adam's
  state.
- `adagrad`: torch's Adagrad update (`LazyAdagrad`: row-sparse gradients without sparse-tensor passes), one float per value.
- `sgd`: no state (`LazySGD`: row-sparse gradients applied by row, as LazyAdagrad).
- `fbgemm-rowwise-adagrad`, `fbgemm-adagrad`, `fbgemm-sgd`: the same updates applied by FBGEMM's fused
  table-batched kernel inside the backward, for the `full` method's tables where fbgemm-gpu-cpu is installed
  (train/fbgemm_tables.py); same state as their pure-PyTorch twins.

Only parameters with sparse gradients (`FeatureEmbedding.sparse_parameters()`) use it; methods whose tables
train through dense gradients (ROBE, TT, ...) stay on Adam, and their bytes count Adam's state.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from torch.optim.adagrad import adagrad as adagrad_update
from torch.optim.sgd import sgd as sgd_update

from embslim.embeddings.base import tensor_bytes
from embslim.errors import ConfigError

TABLE_OPTIMIZERS = ("adam", "rowwise-adagrad", "adagrad", "sgd")
FBGEMM_KINDS = ("fbgemm-rowwise-adagrad", "fbgemm-adagrad", "fbgemm-sgd")  # optional: need fbgemm_gpu and the `full` method
ALL_TABLE_OPTIMIZERS = TABLE_OPTIMIZERS + FBGEMM_KINDS


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad whose accumulator is shared by each row of a table: s_r += mean_j(g_rj^2), w_r -= lr * g_r / (sqrt(s_r) + eps).

    Takes sparse or dense gradients; a 1-D parameter is treated as rows of width one.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.01, eps: float = 1e-8) -> None:
        if lr <= 0:
            raise ConfigError(f"row-wise Adagrad needs a positive learning rate, got {lr}")
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 (torch's signature)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["sum"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
                grad = p.grad
                if grad.is_sparse and grad.sparse_dim() != 1:  # element-wise sparse: not the row form tables give
                    grad = grad.to_dense()
                if grad.is_sparse:
                    rows, values = unique_rows(grad)  # distinct rows, duplicates summed (no coalesce's sparse passes)
                else:
                    rows, values = None, grad
                squares = values.pow(2).reshape(values.shape[0], -1).mean(dim=1)
                if rows is None:
                    state["sum"].add_(squares)
                    scale = state["sum"].sqrt().add_(group["eps"])
                    p.addcdiv_(values, scale.view((-1,) + (1,) * (p.dim() - 1)), value=-group["lr"])
                else:  # rows are distinct: read, update and write them back by row (index_add_ is several times slower)
                    total = state["sum"].index_select(0, rows).add_(squares)
                    state["sum"].index_copy_(0, rows, total)
                    scale = total.sqrt_().add_(group["eps"]).view((-1,) + (1,) * (p.dim() - 1))
                    p.index_copy_(0, rows, p.index_select(0, rows).add_(values / scale, alpha=-group["lr"]))


class PerParameterStep:
    """torch's optimiser `step` contract (closure, no grad) over every parameter that has a gradient, each updated
    by the subclass's `update(group, p, grad)`."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(group, p, p.grad)
        return loss


class LazyAdam(PerParameterStep, torch.optim.SparseAdam):
    """torch's SparseAdam (same update, state and state dict) with a cheaper step for row-sparse gradients.

    SparseAdam coalesces each gradient and applies the moments through sparse tensors (several passes over
    sparse indices). Here the touched rows (in ascending order, as coalescing gives them) and each lookup's row
    come from one `torch.unique`, duplicates are summed by `scatter_add_`, and the moments and weights are read
    and written with dense row gathers. The arithmetic is SparseAdam's, operation for
    operation; only the order in which a row's duplicate gradients are summed may differ (float rounding).
    """

    def update(self, group: dict, p: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = group["betas"]
        if not grad.is_sparse:
            raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        grad = -grad if group.get("maximize", False) else grad
        if grad.sparse_dim() != 1:
            torch.optim._functional.sparse_adam([p], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [state["step"]],
                                                eps=group["eps"], beta1=beta1, beta2=beta2, lr=group["lr"], maximize=False)
            return
        rows, values = unique_rows(grad)
        if rows.numel() == 0:
            return
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        old_exp_avg = exp_avg.index_select(0, rows)
        old_exp_avg_sq = exp_avg_sq.index_select(0, rows)
        numer = values.sub(old_exp_avg).mul_(1 - beta1).add_(old_exp_avg)
        second = values.pow(2).sub_(old_exp_avg_sq).mul_(1 - beta2).add_(old_exp_avg_sq)
        exp_avg.index_copy_(0, rows, numer)
        exp_avg_sq.index_copy_(0, rows, second)
        denom = second.sqrt_().add_(group["eps"])
        step = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        p.index_copy_(0, rows, p.index_select(0, rows).add_(numer.div_(denom).mul_(-step_size)))


class LazyAdagrad(PerParameterStep, torch.optim.Adagrad):
    """torch's Adagrad (same update, state and state dict) with a cheaper step for row-sparse gradients: the
    touched rows and their summed values from one `torch.unique` (no coalesce), the accumulator and the weights read
    and written back by row (torch's sparse path adds through sparse tensors). Other gradients take torch's path."""

    def update(self, group: dict, p: torch.Tensor, grad: torch.Tensor) -> None:
        state = self.state[p]
        if not (grad.is_sparse and grad.sparse_dim() == 1) or group["weight_decay"] or torch.is_complex(p):
            adagrad_update([p], [grad], [state["sum"]], [state["step"]], has_sparse_grad=grad.is_sparse, lr=group["lr"],
                           weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"], maximize=group["maximize"])
            return
        state["step"] += 1
        clr = group["lr"] / (1 + (float(state["step"]) - 1) * group["lr_decay"])
        rows, values = unique_rows(-grad if group["maximize"] else grad)
        if rows.numel() == 0:
            return
        total = state["sum"].index_select(0, rows).add_(values.pow(2))
        state["sum"].index_copy_(0, rows, total)
        p.index_copy_(0, rows, p.index_select(0, rows).add_(values / total.sqrt_().add_(group["eps"]), alpha=-clr))


class LazySGD(PerParameterStep, torch.optim.SGD):
    """torch's SGD (plain: no momentum or weight decay on sparse rows, as torch allows) with row-sparse gradients
    applied by row gather and copy of the distinct touched rows instead of a sparse add. Other cases take torch's path."""

    def update(self, group: dict, p: torch.Tensor, grad: torch.Tensor) -> None:
        if not (grad.is_sparse and grad.sparse_dim() == 1) or group["momentum"] or group["weight_decay"]:
            state = self.state[p]
            sgd_update([p], [grad], [state.get("momentum_buffer")], has_sparse_grad=grad.is_sparse, weight_decay=group["weight_decay"],
                       momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
                       maximize=group["maximize"])
            return
        rows, values = unique_rows(grad)
        if rows.numel():
            p.index_copy_(0, rows, p.index_select(0, rows).add_(values, alpha=group["lr"] if group["maximize"] else -group["lr"]))


def unique_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A row-sparse gradient's distinct rows in ascending order and each row's summed values."""
    indices, values = grad._indices()[0], grad._values()
    if grad.is_coalesced():
        return indices, values
    rows, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    flat = values.reshape(len(indices), -1)
    summed = flat.new_zeros((len(rows), flat.shape[1])).scatter_add_(0, inverse[:, None].expand_as(flat), flat)
    return rows, summed.reshape(len(rows), *values.shape[1:])


def make_table_optimizer(kind: str, params: list[nn.Parameter], lr: float, embedding: nn.Module | None = None) -> torch.optim.Optimizer:
    """The optimiser of kind `kind` over table parameters with sparse gradients (fbgemm kinds: over `embedding`'s tables)."""
    if kind in FBGEMM_KINDS:
        if embedding is None:
            raise ConfigError(f"--table-optimizer {kind} trains an embedding's tables through FBGEMM; it needs the embedding")
        from embslim.train.fbgemm_tables import FbgemmTableOptimizer

        return FbgemmTableOptimizer(kind, embedding, lr)
    if kind == "adam":
        return LazyAdam(params, lr=lr)
    if kind == "rowwise-adagrad":
        return RowWiseAdagrad(params, lr=lr)
    if kind == "adagrad":
        return LazyAdagrad(params, lr=lr)
    if kind == "sgd":
        return LazySGD(params, lr=lr)
    raise ConfigError(f"table optimizer must be one of {list(ALL_TABLE_OPTIMIZERS)}, got {kind!r}")


def state_bytes(kind: str, params: list[nn.Parameter]) -> int:
    """Bytes of optimiser state `kind` keeps for `params` (fp32, as the optimisers store it)."""
    kind = kind.removeprefix("fbgemm-") if kind in FBGEMM_KINDS else kind
    if kind == "adam":
        return 2 * sum(tensor_bytes(p) for p in params)
    if kind == "rowwise-adagrad":
        return sum(p.shape[0] * p.element_size() for p in params)
    if kind == "adagrad":
        return sum(tensor_bytes(p) for p in params)
    if kind == "sgd":
        return 0
    raise ConfigError(f"table optimizer must be one of {list(ALL_TABLE_OPTIMIZERS)}, got {kind!r}")
