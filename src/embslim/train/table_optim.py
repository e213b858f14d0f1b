"""Optimisers for embedding tables and the bytes of state each keeps.

Tables take sparse gradients (only the rows a batch touched), so their optimiser is chosen apart from the
dense network's Adam (`--table-optimizer`):

- `adam`: lazy Adam (torch's SparseAdam), two floats of state per value.
- `rowwise-adagrad`: Adagrad with one accumulator per row (the mean of the squared gradient over the row),
  what production CTR training uses (FBGEMM's EXACT_ROWWISE_ADAGRAD): one float per row, 1/(2d) of Adam's
  state.
- `adagrad`: torch's Adagrad (sparse-aware), one float per value.
- `sgd`: no state.
- `fbgemm-rowwise-adagrad`, `fbgemm-adagrad`, `fbgemm-sgd`: the same updates applied by FBGEMM's fused
  table-batched kernel inside the backward, for the `full` method's tables where fbgemm-gpu-cpu is installed
  (train/fbgemm_tables.py); same state as their pure-PyTorch twins.

Only parameters with sparse gradients (`FeatureEmbedding.sparse_parameters()`) use it; methods whose tables
train through dense gradients (ROBE, TT, ...) stay on Adam, and their bytes count Adam's state.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

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
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:
                    rows, values = None, grad
                squares = values.pow(2).reshape(values.shape[0], -1).mean(dim=1)
                if rows is None:
                    state["sum"].add_(squares)
                    scale = state["sum"].sqrt().add_(group["eps"])
                    p.addcdiv_(values, scale.view((-1,) + (1,) * (p.dim() - 1)), value=-group["lr"])
                else:
                    state["sum"].index_add_(0, rows, squares)
                    scale = state["sum"][rows].sqrt().add_(group["eps"])
                    p.index_add_(0, rows, values / scale.view((-1,) + (1,) * (p.dim() - 1)), alpha=-group["lr"])


def make_table_optimizer(kind: str, params: list[nn.Parameter], lr: float, embedding: nn.Module | None = None) -> torch.optim.Optimizer:
    """The optimiser of kind `kind` over table parameters with sparse gradients (fbgemm kinds: over `embedding`'s tables)."""
    if kind in FBGEMM_KINDS:
        if embedding is None:
            raise ConfigError(f"--table-optimizer {kind} trains an embedding's tables through FBGEMM; it needs the embedding")
        from embslim.train.fbgemm_tables import FbgemmTableOptimizer

        return FbgemmTableOptimizer(kind, embedding, lr)
    if kind == "adam":
        return torch.optim.SparseAdam(params, lr=lr)
    if kind == "rowwise-adagrad":
        return RowWiseAdagrad(params, lr=lr)
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
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
