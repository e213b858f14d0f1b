"""A collisionless table (Monolith: Liu et al. 2022, "Monolith: Real Time Recommendation System With
Collisionless Embedding Table", arXiv 2209.07663; bytedance/monolith): ids map to rows through an exact
map, so two ids never share a row; ids earn a row by being seen, and rows of ids no longer seen are freed.

The map: per field, the admitted ids sorted ascending (one int64 array, field after field) and the row
each one owns; a lookup is one `searchsorted` per field, never a Python dict. Ids are any int64 values:
nothing assumes they are below the field's cardinality, so raw 64-bit (hashed) ids work as they are.
The in-memory data layer encodes ids to a fitted vocabulary, so there the id space is the vocabulary's;
online training (`embslim train --stream --online`) gives it every value's 62-bit hash instead, unencoded.

Admission (`admission`): "count" gives an id a row once it has been seen `min_count` times, counted by a
count-min sketch (2 rows, conservative update: never under-counts, may admit early when it saturates) that
takes `filter_share` of the budget; "probabilistic" is Monolith's memory-free filter, admitting each
occurrence with p = 1 - 0.05^(1/min_count) (so an id is admitted by its min_count-th sighting with
probability 0.95), drawn from a hash of (id, field, step, seed). Ids without a row read one shared learned
default row (Monolith reads zeros; a learned row plays the part of embslim's out-of-vocabulary id).
Admissions, expiry and the counts are applied in `on_step_end` from the ids that step's training lookups
read; a lookup never changes the map it serves.

Expiry (`expire_steps`, 0 = never): an id not seen for that many optimiser steps loses its row to the pool.
A full table (`when_full`): "wait" (default, Monolith's behaviour) admits no one until expiry frees a row,
the counts keep growing meanwhile; "evict" takes the rows of the least recently seen ids (never one seen
this step). When more ids qualify than there are rows, the ones seen most this step go first. A new row
starts from N(0, init_std) drawn from a generator seeded by (seed, step), and with no optimiser state.

Bytes. The budget is a cap on everything the training process holds apart from the optimiser moments:
capacity x (row + int64 key + int32 row index + int32 last-seen step), the default row, the count-min
sketch, the field boundaries and the step counter; capacity is the most rows that fit and never grows.
Serving holds less: the artifact stores only the live ids' keys, their rows (in key order, so no row index)
and the default row, plus the field boundaries, and `memory_bytes("serve")` counts exactly that, so it grows
as ids are admitted. `memory_bytes("train")` counts what the process holds: the capacity tables, two Adam
copies of every row, the filter and the recency (`state_bytes` is that less the served bytes and their
two Adam copies). `stats()` gives live rows, capacity and both byte counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import ADAM_STATE_COPIES, EmbeddingConfig, FeatureEmbedding, StepContext, storage_bytes, tensor_bytes
from embslim.embeddings.hashing import mix
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

SENTINEL = torch.iinfo(torch.int64).max  # key of a free slot: sorts after every id of the last field
FILTER_DEPTH = 2
SLOT_INDEX_BYTES = storage_bytes(1, "int64") + storage_bytes(1, "int32") + storage_bytes(1, "int32")  # key, row, last seen
ADMIT_BY = 0.05  # Monolith: an id is admitted by its T-th occurrence with probability 1 - 0.05


@dataclass(frozen=True)
class CollisionlessSettings:
    """min_count: sightings before an id gets a row; admission: "count" (count-min filter) or "probabilistic"
    (p = 1 - 0.05^(1/min_count) per occurrence); expire_steps: steps unseen before a row is freed (0: never);
    when_full: "wait" (no admission until a row frees) or "evict" (least recently seen first);
    filter_share: share of the budget for the count-min filter; seed: salts and draws."""

    min_count: int = 5
    admission: Literal["count", "probabilistic"] = "count"
    expire_steps: int = 0
    when_full: Literal["wait", "evict"] = "wait"
    filter_share: float = 0.1
    seed: int = 0


def fixed_bytes(n_fields: int, dim: int) -> int:
    """Field boundaries, the step counter and the default row."""
    return storage_bytes(n_fields + 1, "int64") + storage_bytes(1, "int64") + storage_bytes(dim, "fp32")


@register_embedding("collisionless", settings=CollisionlessSettings, budgeted=True)
class CollisionlessEmbedding(FeatureEmbedding):
    """`capacity` rows plus a default row (the last); keys sorted per field, field after field, free slots last."""

    def __init__(self, fields: list[FieldSpec], dim: int, capacity: int, filter_width: int, settings: CollisionlessSettings,
                 init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.settings, self.capacity, self.init_std = list(fields), dim, settings, capacity, init_std
        n = len(fields)
        seed = torch.tensor(settings.seed, dtype=torch.int64)
        self.register_buffer("salts", mix(torch.arange(1, n + 1, dtype=torch.int64), seed), persistent=False)
        self.register_buffer("filter_salts", mix(torch.arange(n + 1, n + 1 + FILTER_DEPTH, dtype=torch.int64), seed), persistent=False)
        self.register_buffer("keys", torch.full((capacity,), SENTINEL, dtype=torch.int64))
        self.register_buffer("slot_rows", torch.full((capacity,), -1, dtype=torch.int32))
        self.register_buffer("last_seen", torch.zeros(capacity, dtype=torch.int32))
        self.register_buffer("counts", torch.zeros(FILTER_DEPTH, filter_width, dtype=torch.int32))
        self.register_buffer("field_starts", torch.zeros(n + 1, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.table = nn.Parameter(torch.randn(capacity + 1, dim) * init_std)
        with torch.no_grad():
            self.table[capacity] = 0  # the default row starts at zero, as Monolith's unadmitted ids read
        self._pending: list[tuple[int, torch.Tensor]] = []

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: CollisionlessSettings) -> "CollisionlessEmbedding":
        if config.budget_bytes is None or config.dims is not None:
            raise ConfigError("embedding 'collisionless' needs a byte cap (--budget) and one dim")
        if settings.min_count < 1 or settings.expire_steps < 0:
            raise ConfigError(f"embedding 'collisionless': min_count must be >= 1 and expire_steps >= 0, "
                              f"got {settings.min_count} and {settings.expire_steps}")
        if not 0 < settings.filter_share < 1:
            raise ConfigError(f"embedding 'collisionless': filter_share must be within (0, 1), got {settings.filter_share}")
        filtered = settings.admission == "count" and settings.min_count > 1
        filter_width = int(settings.filter_share * config.budget_bytes) // storage_bytes(FILTER_DEPTH, "int32") if filtered else 0
        if filtered and filter_width < 1:
            raise BudgetError(f"embedding 'collisionless': filter_share {settings.filter_share} of {config.budget_bytes} bytes "
                              f"is below one counter per filter row")
        row = storage_bytes(config.dim, "fp32") + SLOT_INDEX_BYTES
        left = config.budget_bytes - fixed_bytes(len(fields), config.dim) - storage_bytes(FILTER_DEPTH * filter_width, "int32")
        if left < row:
            raise BudgetError(f"embedding 'collisionless': budget of {config.budget_bytes} bytes is below one row "
                              f"({config.budget_bytes - left + row} bytes with the default row and the filter)")
        return cls(fields, config.dim, left // row, filter_width, settings, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: CollisionlessSettings, meta: dict) -> "CollisionlessEmbedding":
        return cls(fields, meta["dim"], meta["live"], 0, settings)

    @property
    def accepts_raw_ids(self) -> bool:
        return True

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    # -- bytes ---------------------------------------------------------------------
    def live(self) -> int:
        return int(self.field_starts[-1])

    def weight_bytes(self) -> int:
        """Served values: the live rows and the default row."""
        return storage_bytes((self.live() + 1) * self.width, "fp32")

    def index_bytes(self) -> int:
        """Served map: the live ids' keys and the field boundaries."""
        return storage_bytes(self.live(), "int64") + tensor_bytes(self.field_starts)

    def held_bytes(self) -> int:
        """What the training process holds, optimiser moments aside: the byte cap applies to this."""
        return sum(tensor_bytes(t) for t in self.state_dict().values())

    def state_bytes(self) -> int:
        """Held in training beyond the served bytes and their Adam copies: free capacity, row index, recency, filter,
        step, and the Adam copies of the free rows."""
        return (self.held_bytes() + ADAM_STATE_COPIES * tensor_bytes(self.table)
                - self.memory_bytes("serve") - ADAM_STATE_COPIES * self.weight_bytes())

    def stats(self) -> dict:
        return {"live_rows": self.live(), "capacity": self.capacity, "serve_bytes": self.memory_bytes("serve"),
                "held_bytes": self.held_bytes(), "step": int(self.step)}

    @property
    def note(self) -> str:
        s = self.stats()
        return f"{s['live_rows']} of {s['capacity']} rows in use; the process holds {s['held_bytes']} bytes (optimiser aside)"

    # -- the artifact: live ids only -------------------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        n = self.live()
        rows = torch.cat([self.slot_rows[:n].long(), torch.tensor([self.capacity], device=self.keys.device)])
        return {"keys": self.keys[:n].contiguous(), "table": self.table.detach()[rows].contiguous(), "field_starts": self.field_starts.clone()}

    def artifact_meta(self) -> dict:
        return {"dim": self.width, "live": self.live()}

    @torch.no_grad()
    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.keys.copy_(tensors["keys"])
        self.table.copy_(tensors["table"])
        self.field_starts.copy_(tensors["field_starts"])
        self.slot_rows.copy_(torch.arange(self.capacity, dtype=torch.int32))

    # -- lookups -------------------------------------------------------------------
    def rows_of(self, ids: torch.Tensor, field: int) -> torch.Tensor:
        """Each id's own row, or the default row when it has none."""
        start, end = self.field_starts[field:field + 2].tolist()
        if end == start:
            return torch.full_like(ids, self.capacity)
        segment = self.keys[start:end]
        pos = torch.searchsorted(segment, ids).clamp(max=end - start - 1)
        return torch.where(segment[pos] == ids, self.slot_rows[start + pos].long(), self.capacity)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self._pending.append((field, ids.detach().reshape(-1)))
        return F.embedding(self.rows_of(ids, field), self.table, sparse=True)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        rows = torch.stack([self.rows_of(ids[:, j].contiguous(), f) for j, f in enumerate(fields)], 1)
        if self.training and torch.is_grad_enabled():
            self._pending.extend((f, ids[:, j].detach()) for j, f in enumerate(fields))
        return list(F.embedding(rows, self.table, sparse=True).unbind(1))

    def field_table(self, field: int) -> torch.Tensor:
        ids = torch.arange(self.fields[field].cardinality, device=self.table.device)
        return F.embedding(self.rows_of(ids, field), self.table, sparse=True)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table]

    # -- admission, expiry, eviction ---------------------------------------------------
    def on_step_end(self, ctx: StepContext) -> None:
        """Apply this step's training lookups: refresh, count, admit, expire, evict."""
        pending, self._pending = self._pending, []
        by_field: dict[int, list[torch.Tensor]] = {}
        for f, ids in pending:
            by_field.setdefault(f, []).append(ids)
        rows = self.observe({f: torch.cat(chunks) for f, chunks in by_field.items()})
        if len(rows):
            where = torch.zeros(len(self.table), dtype=torch.bool, device=self.table.device)
            where[rows] = True
            ctx.reset_state(self.table, where)

    @torch.no_grad()
    def observe(self, ids_by_field: dict[int, torch.Tensor]) -> torch.Tensor:
        """One step's sightings (field -> ids, any shape): returns the rows newly given to ids."""
        self.step += 1
        now = int(self.step)
        cand_field, cand_ids, cand_counts = [], [], []
        for f in sorted(ids_by_field):
            uniq, counts = torch.unique(ids_by_field[f].reshape(-1), return_counts=True)
            rows = self.rows_of(uniq, f)
            known = rows < self.capacity
            self.last_seen[rows[known]] = now
            new, counts = uniq[~known], counts[~known]
            admit = self._admit(f, new, counts, now)
            cand_field.append(torch.full((int(admit.sum()),), f, dtype=torch.int64, device=new.device))
            cand_ids.append(new[admit])
            cand_counts.append(counts[admit])
        n = self.live()
        field_of = torch.repeat_interleave(torch.arange(len(self.fields), device=self.keys.device), self.field_starts.diff())
        keep = torch.ones(n, dtype=torch.bool, device=self.keys.device)
        seen = self.last_seen[self.slot_rows[:n].long()]
        if self.settings.expire_steps > 0:
            keep &= seen >= now - self.settings.expire_steps
        fields, ids, counts = (torch.cat(c) if c else torch.zeros(0, dtype=torch.int64) for c in (cand_field, cand_ids, cand_counts))
        order = torch.argsort(ids, stable=True)
        order = order[torch.argsort(fields[order], stable=True)]
        order = order[torch.argsort(-counts[order], stable=True)]  # most seen this step first, then field, then id
        fields, ids = fields[order], ids[order]
        free = self.capacity - int(keep.sum())
        if len(ids) > free and self.settings.when_full == "evict":
            evictable = torch.nonzero(keep & (seen < now)).flatten()
            lru = evictable[torch.argsort(seen[evictable], stable=True)][:len(ids) - free]
            keep[lru] = False
            free += len(lru)
        fields, ids = fields[:free], ids[:free]
        used = torch.zeros(self.capacity, dtype=torch.bool, device=self.keys.device)
        used[self.slot_rows[:n][keep].long()] = True
        rows = torch.nonzero(~used).flatten()[:len(ids)]
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + now)
        self.table[rows] = (torch.randn(len(rows), self.width, generator=generator) * self.init_std).to(self.table)
        self.last_seen[rows] = now
        self._rebuild(torch.cat([field_of[keep], fields]), torch.cat([self.keys[:n][keep], ids]),
                      torch.cat([self.slot_rows[:n][keep].long(), rows]))
        return rows

    def _admit(self, field: int, ids: torch.Tensor, counts: torch.Tensor, now: int) -> torch.Tensor:
        """Which of these unmapped ids, seen `counts` times this step, are admitted now."""
        t = self.settings.min_count
        if t == 1 or len(ids) == 0:
            return torch.ones_like(ids, dtype=torch.bool)
        if self.settings.admission == "probabilistic":
            when = mix(torch.tensor(now, dtype=torch.int64), self.filter_salts[0])
            h = mix(mix(ids, self.salts[field]) ^ when, self.filter_salts[1])
            u = (h >> 11).double() / 2.0**52  # mix leaves bit 63 clear: bits 11..62, the best mixed, as a uniform in [0, 1)
            return u < 1 - ADMIT_BY ** (counts.double() / t)
        width = self.counts.shape[1]
        cells = torch.stack([mix(ids, self.salts[field] ^ s).remainder(width) for s in self.filter_salts])
        estimate = torch.gather(self.counts, 1, cells).amin(0) + counts.to(torch.int32)
        for d in range(FILTER_DEPTH):  # conservative update: raise each counter only to the new estimate
            self.counts[d].scatter_reduce_(0, cells[d], estimate, reduce="amax")
        return estimate >= t

    def _rebuild(self, fields: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Rewrite the sorted map from (field, key, row) entries."""
        order = torch.argsort(keys, stable=True)
        order = order[torch.argsort(fields[order], stable=True)]
        n = len(order)
        self.keys.fill_(SENTINEL)
        self.slot_rows.fill_(-1)
        self.keys[:n] = keys[order]
        self.slot_rows[:n] = rows[order].to(torch.int32)
        self.field_starts[1:] = torch.bincount(fields, minlength=len(self.fields)).cumsum(0)
