"""Table-wise sharding of an embslim collection over torch.distributed ranks (gloo on CPU, or any backend).

TorchRec's planner and `DistributedModelParallel` shard only TorchRec's own module types, so this
does the table-wise case directly: each rank owns a subset of the tables (an
`embslim.nn.EmbeddingBagCollection` of them with its share of the budget), computes their pooled
outputs for the whole (global) batch, and one differentiable all-to-all (`dist.all_to_all_single`) hands every rank
the pooled outputs of all features for its slice of the batch, so the dense part runs data-parallel
(wrap it in DDP). In backward the same collective returns each slice's gradients to the owning rank.

    ebc = ShardedEmbeddingBagCollection(tables, method="qr", budget_bytes=0.1)   # after init_process_group
    pooled = ebc(global_features)        # this rank's rows of the batch, every feature
    loss = ddp_dense(dense[my_rows], pooled)

Budget share: a fraction (float) is the same fraction of each rank's own fp32 tables; bytes (int) are
split in proportion to the fp32 bytes of the tables each rank owns. Within its share a rank's method
splits the bytes between its tables as usual (mde by frequency, hash by rows, ...).

Which methods shard: those whose fields keep their rows in storage of their own (full, hash with its
default per-field tables, qr, mde, tt, lowrank, double-hash, nested, magnitude, pep, dsl, lpt and the
converters int8/int4/int2/fp16/bf16/svd). Methods whose fields share storage (robe's one array,
multiplex's one table, hash with shared=True, mpe's quantiser offsets shared by all fields) cannot be
split by table. This is not a list kept here: `shared_storage` probes a built method and reports the
tensors that rows of more than one field read, and `shardable(method, **settings)` asks that of a small
probe collection.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from embslim.embeddings import FeatureEmbedding, method_info
from embslim.embeddings.base import Stage
from embslim.errors import BudgetError, ConfigError
from embslim.nn.collection import EmbeddingBagCollection, TableConfig, _bag, keyed_tensor, torchrec_tables

PROBE_ROWS = (600, 300, 50)
PROBE_BUDGET = 0.3


def shared_storage(embedding: FeatureEmbedding) -> list[str]:
    """Names of the tensors of `embedding` that rows of more than one field read; [] when every field's
    rows live in storage of their own (so the method can be split by table).

    Probed on a copy: float parameters redrawn away from zero, every float tensor (parameters and
    buffers such as scales) made to require grad, and each field's whole table looked up in eval mode
    (what is served); a tensor element whose gradient is non-zero for two fields is shared. Byte storage
    (uint8 codes, fused quantised rows), which no gradient reaches, is probed row by row: a row whose
    change alters the output of two fields is shared.
    """
    probe = copy.deepcopy(embedding).eval()
    with torch.no_grad():
        for p in probe.parameters():
            if p.is_floating_point():
                p.uniform_(0.5, 1.5)
    tensors = [(name, t) for name, t in list(probe.named_parameters()) + list(probe.named_buffers()) if t.is_floating_point()]
    for _, t in tensors:
        t.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    seen: dict[str, torch.Tensor] = {}
    shared: set[str] = set()
    for i, f in enumerate(probe.fields):
        for _, t in tensors:
            t.grad = None
        out = probe.lookup(i, torch.arange(f.cardinality))
        if out.requires_grad:
            (out * torch.randn(out.shape, generator=gen)).sum().backward()
        for name, t in tensors:
            if t.grad is None:
                continue
            touched = t.grad.to_dense() != 0
            if name in seen:
                if (seen[name] & touched).any():
                    shared.add(name)
                seen[name] |= touched
            else:
                seen[name] = touched
    return sorted(shared | set(shared_byte_rows(probe)))


@torch.no_grad()
def shared_byte_rows(embedding: FeatureEmbedding) -> list[str]:
    """Names of the uint8 buffers of which some row is read by more than one field: each row's bytes
    inverted in turn, every field's whole table looked up again and compared."""
    lookups = [torch.arange(f.cardinality) for f in embedding.fields]
    before = [embedding.lookup(i, ids) for i, ids in enumerate(lookups)]
    shared = []
    for name, buffer in embedding.named_buffers():
        if buffer.dtype != torch.uint8 or buffer.dim() == 0:
            continue
        for row in range(len(buffer)):
            buffer[row] ^= 0xFF
            readers = sum(not torch.equal(embedding.lookup(i, ids), b) for i, (ids, b) in enumerate(zip(lookups, before)))
            buffer[row] ^= 0xFF
            if readers > 1:
                shared.append(name)
                break
    return shared


def collection_shared_storage(ebc: EmbeddingBagCollection) -> list[str]:
    """`shared_storage` of a collection: of its training tables and, for a converter, of what it serves."""
    shared = shared_storage(ebc.set.embedding)
    if ebc.set.info.source == "trained":
        shared += [f"served {name}" for name in shared_storage(ebc.set.served())]
    return shared


@lru_cache(maxsize=None)
def _probe(method: str, settings: tuple) -> tuple[str, ...]:
    """Shared tensors of `method` built on three small tables (torch's random state is left as it was)."""
    rng = np.random.default_rng(0)
    tables = [TableConfig(f"probe{i}", n, 8, counts=rng.zipf(1.4, n).clip(max=100_000)) for i, n in enumerate(PROBE_ROWS)]
    with torch.random.fork_rng():
        ebc = EmbeddingBagCollection(tables, method=method, budget_bytes=PROBE_BUDGET, total_steps=10, **dict(settings))
        return tuple(collection_shared_storage(ebc))


def shardable(method: str, **settings: Any) -> bool:
    """Whether `method` (with these settings) keeps each table's rows apart, so tables can live on different ranks."""
    return why_not_shardable(method, **settings) is None


def why_not_shardable(method: str, **settings: Any) -> str | None:
    """None when `method` shards table-wise, else one line naming the storage its tables share."""
    info = method_info(method)
    if info.source == "search":
        return f"method {method!r} is a search (run embslim.nn.DNISSearch unsharded, then shard its pruned tables)"
    try:
        shared = _probe(method, tuple(sorted(settings.items())))
    except (ConfigError, BudgetError) as err:
        return f"method {method!r} could not be built on a small probe collection to check its storage ({err})"
    if shared:
        return f"method {method!r} stores rows of different tables in the same tensors ({', '.join(shared)}): it cannot be sharded by table"
    return None


def table_plan(tables: list[TableConfig], world_size: int) -> list[int]:
    """The rank of each table: largest fp32 table first to the least loaded rank (the same on every rank)."""
    load = [0] * world_size
    plan = [0] * len(tables)
    for i in sorted(range(len(tables)), key=lambda i: (-tables[i].num_embeddings * tables[i].embedding_dim, i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        plan[i] = rank
        load[rank] += tables[i].num_embeddings * tables[i].embedding_dim
    return plan


def budget_share(budget_bytes: int | float | None, tables: list[TableConfig], mine: list[TableConfig]) -> int | float | None:
    """A rank's budget: the same fraction of its own tables, or bytes in proportion to its tables' fp32 bytes."""
    if budget_bytes is None or isinstance(budget_bytes, float):
        return budget_bytes
    size = lambda ts: sum(t.num_embeddings * t.embedding_dim for t in ts)  # noqa: E731
    return int(budget_bytes * size(mine) // size(tables))


class _Exchange(torch.autograd.Function):
    """`all_to_all_single` with its transpose as backward; the gradient is scaled by `scale` on the way back
    (1 / world size: DDP averages the dense gradients over ranks, this does the same for the tables)."""

    @staticmethod
    def forward(ctx: Any, send: torch.Tensor, send_splits: list[int], receive_splits: list[int], group: Any, scale: float) -> torch.Tensor:
        ctx.splits, ctx.group, ctx.scale = (send_splits, receive_splits), group, scale
        received = send.new_empty(sum(receive_splits))
        dist.all_to_all_single(received, send.contiguous(), receive_splits, send_splits, group=group)
        return received

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        send_splits, receive_splits = ctx.splits
        back = grad.new_empty(sum(send_splits))
        dist.all_to_all_single(back, grad.contiguous(), send_splits, receive_splits, group=ctx.group)
        return back * ctx.scale, None, None, None, None


class ShardedEmbeddingBagCollection(nn.Module):
    """An `EmbeddingBagCollection` split table-wise over the ranks of a process group.

    Every rank gets the features of the global batch (a dict as `EmbeddingBagCollection` takes, or a
    `KeyedJaggedTensor`) and returns the pooled outputs of every feature for its own rows of the batch
    (`batch_rows(batch, rank)`: the batch cut into world_size nearly equal contiguous slices), as a dict
    or a `KeyedTensor`. Table gradients are those of the mean loss over ranks, as DDP's dense ones are.
    `plan` (table name -> rank) overrides `table_plan`. `group`: the process group of the exchange (default: a
    new group of all ranks, so the exchange never interleaves with DDP's all-reduces on the default group).
    """

    def __init__(self, tables: list[TableConfig], *, method: str = "full", budget_bytes: int | float | None = None,
                 plan: Mapping[str, int] | None = None, group: Any = None, **kwargs: Any) -> None:
        super().__init__()
        settings = {k: v for k, v in kwargs.items() if k not in ("sparse", "init_std", "total_steps")}
        reason = why_not_shardable(method, **settings)
        if reason:
            raise ConfigError(reason)
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError("a ShardedEmbeddingBagCollection needs torch.distributed.init_process_group first")
        # a group of its own: DDP all-reduces the dense gradients asynchronously during the same backward, and
        # collectives on one group must be issued in the same order on every rank
        self.group = group if group is not None else dist.new_group()
        self.rank, self.world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        if plan is None:
            ranks = table_plan(tables, self.world_size)
        else:
            missing = sorted({t.name for t in tables} - set(plan))
            if missing or any(not 0 <= r < self.world_size for r in plan.values()):
                raise ConfigError(f"plan must give every table a rank in [0, {self.world_size}) (missing: {missing})")
            ranks = [plan[t.name] for t in tables]
        self.tables = list(tables)
        self.owner = {f: r for t, r in zip(tables, ranks) for f in t.features()}
        self.width = {f: t.embedding_dim for t in tables for f in t.features()}
        mine = [t for t, r in zip(tables, ranks) if r == self.rank]
        self.local_tables = mine
        self.local = EmbeddingBagCollection(mine, method=method, budget_bytes=budget_share(budget_bytes, tables, mine), **kwargs) if mine else None

    @classmethod
    def from_torchrec(cls, source: Any, counts: Mapping[str, Any] | None = None, **kwargs: Any) -> "ShardedEmbeddingBagCollection":
        """Sharded tables for a TorchRec EmbeddingBagCollection or list of EmbeddingBagConfigs (configs only: fresh weights)."""
        return cls(torchrec_tables(source, counts), **kwargs)

    def batch_rows(self, batch: int, rank: int | None = None) -> slice:
        """The rows of a global batch of `batch` rows that `rank` (default: this one) computes the dense part of."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(batch, self.world_size)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (rank < extra))

    def memory_bytes(self, stage: Stage = "serve") -> int:
        """Exact bytes of this rank's tables."""
        return self.local.memory_bytes(stage) if self.local is not None else 0

    def forward(self, features: Any) -> Any:
        keyed = hasattr(features, "to_dict") and hasattr(features, "keys")
        bags = {k: (jt.values(), jt.offsets()) for k, jt in features.to_dict().items()} if keyed else {
            k: _bag(k, v) for k, v in features.items()}
        unknown = sorted(set(bags) - set(self.owner))
        if unknown:
            raise KeyError(f"features {unknown} belong to no table; known: {sorted(self.owner)}")
        keys = list(bags)
        batch = len(next(iter(bags.values()))[1]) - 1
        by_rank = [[k for k in keys if self.owner[k] == r] for r in range(self.world_size)]
        if by_rank[self.rank]:
            pooled = self.local({k: {"values": bags[k][0], "offsets": bags[k][1]} for k in by_rank[self.rank]})
            local = torch.cat([pooled[k] for k in by_rank[self.rank]], dim=1)
        else:
            local = torch.zeros(batch, 0)
        slices = [self.batch_rows(batch, r) for r in range(self.world_size)]
        send = torch.cat([local[s].reshape(-1) for s in slices])
        if torch.is_grad_enabled() and not send.requires_grad:
            send.requires_grad_()  # every rank must join the backward collective, with tables to train or not
        widths = [sum(self.width[k] for k in ks) for ks in by_rank]
        rows = slices[self.rank].stop - slices[self.rank].start
        received = _Exchange.apply(send, [(s.stop - s.start) * local.shape[1] for s in slices], [rows * w for w in widths],
                                   self.group, 1.0 / self.world_size)
        out: dict[str, torch.Tensor] = {}
        for ks, part in zip(by_rank, received.split([rows * w for w in widths])):
            columns = part.view(rows, -1).split([self.width[k] for k in ks], dim=1) if ks else []
            out.update(zip(ks, columns))
        if keyed:
            return keyed_tensor(keys, [out[k] for k in keys])
        return {k: out[k] for k in keys}
