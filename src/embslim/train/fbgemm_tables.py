"""`--table-optimizer fbgemm-*`: the `full` method's tables trained through FBGEMM's table-batched kernel.

Where fbgemm-gpu-cpu is installed (the `torchrec` extra, `make torchrec`), each width group of a `full`
embedding gets one `SplitTableBatchedEmbeddingBagsCodegen` (CPU, one table, bags of one id) whose backward
applies the optimiser's update in the same pass (EXACT_ROWWISE_ADAGRAD, EXACT_ADAGRAD or EXACT_SGD): no
sparse gradient is built, sorted or stepped apart.

The embedding's own table parameter stays the source of truth: the kernel's weight storage IS that
parameter's memory (`weights_host.data` is set to a flat view of it), so exports, byte counts, checkpoints
and the evaluation lookups read the trained values with no copy in either direction, and loading a state
dict into the embedding (an in-place copy) is what the kernel trains next. The optimiser object the
trainer holds (`FbgemmTableOptimizer`) has no update of its own: it carries the learning rate to the
kernels (at `zero_grad` and `step`, so before each backward) and exposes the kernels' accumulators as its
state (`sum`, as torch's Adagrad names it), so `StepContext.reset_state`, checkpoints and resume work as
with the pure-PyTorch optimisers.

The updates are those of `rowwise-adagrad` (s_r += mean_j g_rj^2; w_r -= lr g_r / (sqrt(s_r) + eps),
eps 1e-8), torch's sparse `adagrad` (eps 1e-10) and `sgd`, on the gradient summed over a batch's duplicate
ids, as FBGEMM's CPU kernels define them (tests/test_fbgemm_tables.py checks each against the pure-PyTorch
path). One difference: each lookup call is its own fused update, so a row looked up by two separate calls in
one step (a field read both as a single value and through `lookup`) is updated twice, where the pure path
sums the two gradients first. `full` reads all single-valued fields in one call per width group.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from embslim.embeddings.base import FeatureEmbedding
from embslim.errors import ConfigError
from embslim.extras import require

# --table-optimizer -> (FBGEMM's optimiser, its accumulator's shape: "row" or "value" or None, eps)
FBGEMM_TABLE_OPTIMIZERS = {
    "fbgemm-rowwise-adagrad": ("EXACT_ROWWISE_ADAGRAD", "row", 1e-8),
    "fbgemm-adagrad": ("EXACT_ADAGRAD", "value", 1e-10),
    "fbgemm-sgd": ("EXACT_SGD", None, 0.0),
}
PURE_EQUIVALENT = {"fbgemm-rowwise-adagrad": "rowwise-adagrad", "fbgemm-adagrad": "adagrad", "fbgemm-sgd": "sgd"}


def check_fbgemm_path(kind: str, embedding: FeatureEmbedding) -> None:
    """One-line ConfigError when `embedding` is not one FBGEMM's kernel can train (the `full` method, widths multiples of 4)."""
    from embslim.embeddings.full import FullEmbedding

    if not (isinstance(embedding, FullEmbedding) and embedding.method_name == "full"):
        raise ConfigError(f"--table-optimizer {kind} trains only the `full` method's tables, not {embedding.method_name!r}: "
                          f"use --table-optimizer {PURE_EQUIVALENT[kind]}")
    odd = [d for d in embedding.group_dims if d % 4]
    if odd:
        raise ConfigError(f"--table-optimizer {kind} needs widths that are multiples of 4 (FBGEMM's rows), got {odd}")


class FbgemmTableOptimizer(torch.optim.Optimizer):
    """The trainer's handle on FBGEMM kernels that update a `full` embedding's tables inside backward.

    Building it attaches the kernels to `embedding` (its training lookups go through them); `step` applies
    no update (the backward did) but hands a changed learning rate to the kernels.
    """

    def __init__(self, kind: str, embedding: FeatureEmbedding, lr: float) -> None:
        check_fbgemm_path(kind, embedding)
        if lr <= 0:
            raise ConfigError(f"--table-optimizer {kind} needs a positive learning rate, got {lr}")
        require("fbgemm_gpu", f"--table-optimizer {kind}")
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen

        optim, accumulator, eps = FBGEMM_TABLE_OPTIMIZERS[kind]
        tables = list(embedding.tables)
        super().__init__(tables, {"lr": lr})
        self.kernels = []
        for table in tables:
            rows, dim = table.shape
            tbe = SplitTableBatchedEmbeddingBagsCodegen([(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
                                                        optimizer=getattr(EmbOptimType, optim), learning_rate=lr, eps=eps,
                                                        pooling_mode=PoolingMode.SUM, device="cpu")
            tbe.weights_host.data = table.data.view(-1)  # the kernel trains the embedding's own memory
            if accumulator is not None:  # FBGEMM starts it at zero, as the pure-PyTorch optimisers do
                acc = tbe.momentum1_host.detach()  # the same memory, without the autograd flag FBGEMM leaves on it
                self.state[table] = {"sum": acc.view(rows, dim) if accumulator == "value" else acc}
            self.kernels.append(tbe)
        self._lr = lr
        embedding.fused_gathers = [self._gather(tbe, table.shape[1]) for tbe, table in zip(self.kernels, tables)]

    @staticmethod
    def _gather(tbe: nn.Module, dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def gather(rows: torch.Tensor) -> torch.Tensor:
            flat = rows.reshape(-1)
            offsets = torch.arange(flat.shape[0] + 1, dtype=torch.int64, device=flat.device)
            return tbe(flat, offsets).view(*rows.shape, dim)
        return gather

    def _sync_lr(self) -> None:
        lr = self.param_groups[0]["lr"]
        if lr != self._lr:
            for tbe in self.kernels:
                tbe.set_learning_rate(lr)
            self._lr = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear (the tables never hold a gradient); passes a changed learning rate on before the backward."""
        self._sync_lr()

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 (torch's signature)
        """The update already happened in the backward; only the learning rate is passed on."""
        self._sync_lr()

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads the accumulators into the kernels' own memory (so the kernels keep training them)."""
        live = {p: dict(s) for p, s in self.state.items()}
        super().load_state_dict(state_dict)
        for p, s in live.items():
            s["sum"].copy_(self.state[p]["sum"])
            self.state[p] = s
        self._sync_lr()
