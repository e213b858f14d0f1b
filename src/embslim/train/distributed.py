"""Data-parallel training over torch.distributed ranks (gloo on CPU): `embslim train --nproc N`, or torchrun.

Every rank builds the same model from the same seed (tables replicated), takes a disjoint slice of each
global batch (`--batch-size` rows, so N processes take the optimizer steps one process takes) and trains
through `DistributedDataParallel`, which averages the dense gradients. DDP recognises sparse gradients
only of `nn.Embedding(sparse=True)` modules, and embslim's tables are parameters read with `F.embedding`,
so the tables with sparse gradients (`sparse_parameters()`) are kept out of DDP and all-reduced here
after backward, as sparse tensors (gloo sums them; DDP would do the same). Each rank's loss is weighted
by its share of the batch, so the averaged gradient is the gradient of the global batch's mean loss
even when the slices differ by a row.

Embedding methods whose training hooks change state from the rows a rank sees (admission counters,
sketches of hot ids) would drift apart across ranks. Nothing lists them: after the first step and after
every epoch the ranks compare a digest of every tensor of the model's state, and a difference stops the
run with a ConfigError naming the method and the tensors that diverged.

Rank 0 evaluates (its metrics are broadcast, so early stopping decides the same everywhere) and writes
checkpoints and results; `is_main()` says which rank that is. `spawn_run` starts N processes on this
machine; under torchrun (RANK and WORLD_SIZE set) `init_from_env` joins the launcher's group instead.
"""
from __future__ import annotations

import datetime
import gc
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from embslim import errors
from embslim.embeddings.batch import SparseBatch
from embslim.errors import ConfigError, EmbslimError

BACKEND = "gloo"
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int


def current() -> Rank | None:
    """This process's place in a data-parallel group of more than one process, else None."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return Rank(dist.get_rank(), dist.get_world_size())


def world_size() -> int:
    ctx = current()
    return ctx.world_size if ctx else 1


def is_main() -> bool:
    """True on rank 0 and in a single process: the one that writes results and checkpoints."""
    ctx = current()
    return ctx is None or ctx.rank == 0


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (a no-op in one process)."""
    if current() is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def find_free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for the group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- batches -----------------------------------------------------------------------------------------------------

def shard_rows(batch: int, rank: int, world: int) -> tuple[slice, float]:
    """The rows of a global batch of `batch` rows that `rank` trains on, and the weight of its mean loss.

    Nearly equal contiguous slices; the weight n_rank * world / batch makes the average over ranks (what
    DDP's gradient is) the mean over the whole batch. A batch of fewer rows than ranks is trained whole by
    every rank with weight 1 (the same gradient everywhere), so no rank is left without rows.
    """
    if batch < world:
        return slice(0, batch), 1.0
    base, extra = divmod(batch, world)
    start = rank * base + min(rank, extra)
    rows = base + (rank < extra)
    return slice(start, start + rows), rows * world / batch


def slice_batch(batch: SparseBatch, rows: slice) -> SparseBatch:
    """Rows `rows` of a SparseBatch: its ids, labels, sequences and the matching part of every bag."""
    bags = {}
    for name, (values, offsets) in batch.bags.items():
        part = offsets[rows.start:rows.stop + 1]
        bags[name] = (values[part[0]:part[-1]], part - part[0])
    return SparseBatch(batch.ids[rows], bags, batch.label[rows], {k: v[rows] for k, v in batch.sequences.items()})


class WeightedLoss(nn.Module):
    """The module DDP wraps: `loss(batch) * weight`, with the model registered so DDP syncs its gradients."""

    def __init__(self, model: nn.Module, loss: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, batch: Any, weight: float) -> torch.Tensor:
        return self._loss(batch) * weight


def wrap(model: nn.Module, loss: Callable[[Any], torch.Tensor], sparse: list[nn.Parameter]) -> nn.parallel.DistributedDataParallel:
    """DDP over `loss`, leaving out the `sparse` parameters (`sync_sparse` averages theirs). Nothing is broadcast,
    at the start or each step: every rank built the same model from the same seed (and gloo cannot broadcast
    some buffer types, e.g. mde's int16 column positions), and state a rank changes on its own must show up in
    `check_consistent`, not be overwritten by rank 0's. Unused parameters are allowed (masked or frozen parts)."""
    module = WeightedLoss(model, loss)
    ids = {id(p) for p in sparse}
    ignored = [name for name, p in module.named_parameters() if id(p) in ids]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
    return nn.parallel.DistributedDataParallel(module, init_sync=False, find_unused_parameters=True, forward_sync_buffers=False)


def sync_sparse(params: list[nn.Parameter]) -> None:
    """Average the gradients of `params` over the ranks as sparse tensors (a rank that did not touch a
    table sends an empty one; a dense gradient is sent in sparse form, so every rank sends the same layout)."""
    ctx = current()
    if ctx is None:
        return
    for p in params:
        g = p.grad
        if g is None:
            g = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long, device=p.device),
                                        p.new_zeros((0, *p.shape[1:])), p.shape)
        elif not g.is_sparse:
            g = g.to_sparse(sparse_dim=1)
        g = g.coalesce() * (1.0 / ctx.world_size)
        dist.all_reduce(g)
        p.grad = g


# -- consistency ------------------------------------------------------------------------------------------------

def state_digest(module: nn.Module) -> dict[str, str]:
    """A hash of every tensor of `module`'s state (parameters and buffers), by name."""
    out = {}
    for name, t in module.state_dict().items():
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            out[name] = hashlib.blake2b(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"", digest_size=16).hexdigest()
    return out


def check_consistent(model: nn.Module, method: str) -> None:
    """Raise ConfigError on every rank when the ranks' model states differ (a method whose hooks learn from each
    rank's own rows). Gradients are averaged, so parameters trained by them agree bit for bit."""
    if current() is None:
        return
    digests: list[dict[str, str] | None] = [None] * world_size()
    dist.all_gather_object(digests, state_digest(model))
    diverged = sorted(name for name, h in digests[0].items() if any(d.get(name) != h for d in digests[1:]))
    if diverged:
        names = ", ".join(diverged[:4]) + (f" and {len(diverged) - 4} more" if len(diverged) > 4 else "")
        raise ConfigError(f"embedding {method!r} changes its state from each process's own rows ({names} differ across ranks): "
                          f"it cannot train data-parallel; run it with --nproc 1")


# -- processes --------------------------------------------------------------------------------------------------

def init_from_env() -> Rank | None:
    """Join the process group torchrun (or any launcher setting RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) describes."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    if not dist.is_initialized():
        dist.init_process_group(BACKEND, timeout=TIMEOUT)
    return Rank(dist.get_rank(), dist.get_world_size())


def _worker(rank: int, world: int, port: int, threads: int, fn: Callable[..., Any], args: tuple, failures: Any) -> None:
    if threads:
        torch.set_num_threads(threads)
    dist.init_process_group(BACKEND, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        fn(*args)
        gc.collect()  # free DDP reducers and groups held in reference cycles while every rank is still here,
        dist.barrier()  # then leave together: a rank tearing down after its peers exited aborted ("terminate called ...")
    except EmbslimError as exc:
        failures.put((type(exc).__name__, str(exc)))
        raise SystemExit(2) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_run(fn: Callable[..., Any], args: tuple, nproc: int) -> None:
    """Run `fn(*args)` in `nproc` new processes joined in one gloo group on this machine; returns when all finish.

    Without OMP_NUM_THREADS each process gets its share of the CPUs. An EmbslimError on any rank stops the
    others and is raised here with its message; any other failure raises torch's ProcessExitedException.
    """
    if nproc < 2:
        raise ConfigError(f"spawn_run needs at least 2 processes, got {nproc}")
    threads = 0 if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // nproc)
    failures = mp.get_context("spawn").SimpleQueue()
    try:
        mp.start_processes(_worker, (nproc, find_free_port(), threads, fn, args, failures), nprocs=nproc, start_method="spawn")
    except (mp.ProcessExitedException, mp.ProcessRaisedException):
        if not failures.empty():
            kind, message = failures.get()
            raise getattr(errors, kind, EmbslimError)(message) from None
        raise


def run_worker(data: Any, config: Any, out_dir: Path | None, resume: bool) -> None:
    """One rank of `embslim train --nproc N`: the same `run` as one process (rank 0 writes)."""
    from embslim.train.run import run

    run(data, config, out_dir, resume)
