"""CAFE (Zhang et al., SIGMOD 2024, "CAFE: Towards Compact, Adaptive, and Fast Embedding for Large-scale
Recommendation Models"; reference code HugoZHL/CAFE): a sketch finds the hot ids online; hot ids own rows,
cold ids share a hashed table.

Per field, a HotSketch of B buckets x `slots` slots, each slot an (id, score, row) triple. Every id a
training batch reads adds its occurrences to its slot's score (`score += 1` per occurrence: the
reference's `use_freq` mode; its default scores by gradient norm instead). An id absent from its bucket
takes an empty slot, or else replaces the bucket's lowest-scoring slot that is not hot, inheriting that
score (SpaceSaving); when every slot is hot, it is not recorded. A recorded id whose score reaches
`threshold` gets a free hot row, initialised from the hashed row it read until then (migration), with
its optimiser state cleared. Scores decay by `decay` whenever a field has inserted more than
10 x B x threshold occurrences since its last decay; a hot id that falls below the threshold then gives
its row back to the pool (its hot vector is dropped; it reads its hashed row again), as in the reference.

Updates are batched, not per id: the ids one step read are counted, ids already in a bucket add their
counts, newcomers fill empty slots in order of count, and all newcomers left over in one bucket replace
its lowest non-hot slot together (the heaviest keeps the slot, their counts add to its score), which is
what the reference's one-id-at-a-time loop ends with when they arrive in a row. The sketch is updated in
`on_step_end`, after the optimiser step, from the ids the training lookups read during that step, so a
lookup never changes the mapping it serves (and a serving module, in eval mode, never updates it).

Bytes, per field: m hashed rows, H hot rows and H buckets (one bucket per hot row, as the reference
sizes its sketch), a bucket costing `slots` x (int32 id + fp32 score + int32 row) = 48 bytes at 4 slots
(the reference's `Bucket`); plus five int64 per field (two salts, m, H, occurrences since the last
decay). Every one of these tensors is in the artifact; serving reads ids and rows (the frozen hot map).
The budget is split over fields as the hashing trick splits it (equal shares, a field that fits whole
is kept whole and unhashed, with no sketch); a hashed field gives `hash_rate` of its share to the hashed
table and the rest to hot rows with their buckets.

Defaults (None) follow the reference's Criteo schedule (ArtifactEvaluation/tasks/criteo.json) at the
listed compression rate nearest the budget's: threshold 20 and hash_rate 0.5 at 10x, 100 and 0.3 at
100x; slots 4 and decay 0.99 are the reference code's. The thresholds count occurrences on the 45M-row
Criteo log: on a small dataset they are strict (fewer ids ever become hot).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, StepContext, storage_bytes, tensor_bytes
from embslim.embeddings.hashing import mix, split_rows
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

INDEX_PER_FIELD = 5 * storage_bytes(1, "int64")
SLOT_BYTES = storage_bytes(1, "int32") + storage_bytes(1, "fp32") + storage_bytes(1, "int32")
SCHEDULE = ((0.5, 10, 0.7), (0.2, 10, 0.5), (0.1, 20, 0.5), (0.05, 30, 0.5), (0.02, 50, 0.3), (0.01, 100, 0.3),
            (0.005, 200, 0.2), (0.002, 500, 0.2), (0.001, 500, 0.2), (0.0005, 500, 0.1), (0.0002, 500, 0.1), (0.0001, 500, 0.1))
EMPTY = -1


@dataclass(frozen=True)
class CafeSettings:
    """threshold: score at which an id becomes hot; hash_rate: share of a hashed field's bytes given to its hashed
    table (None: the reference's Criteo schedule at the budget's compression rate); slots: per sketch bucket;
    decay: score multiplier applied when a field's sketch has taken 10 x buckets x threshold occurrences; seed: salts."""

    threshold: float | None = None
    hash_rate: float | None = None
    slots: int = 4
    decay: float = 0.99
    seed: int = 0


def scheduled(rate: float) -> tuple[float, float]:
    """(threshold, hash_rate) of the reference's Criteo schedule at the listed compression rate nearest `rate` (log scale)."""
    _, threshold, hash_rate = min(SCHEDULE, key=lambda s: abs(math.log(s[0]) - math.log(max(rate, 1e-12))))
    return float(threshold), hash_rate


def split_field(units: int, cardinality: int, dim: int, hash_rate: float, slots: int) -> tuple[int, int]:
    """(hashed rows m, hot rows H) of a field given `units` rows' worth of fp32 bytes: a field that fits is whole
    (m = cardinality, H = 0); otherwise m takes `hash_rate` of the bytes (at least one row), H what the rest pays
    for at one row plus one bucket each, and m what H leaves over."""
    if units >= cardinality:
        return cardinality, 0
    row = storage_bytes(dim, "fp32")
    hot = (units - min(units, max(1, int(hash_rate * units)))) * row // (row + slots * SLOT_BYTES)
    return (units * row - hot * (row + slots * SLOT_BYTES)) // row, hot


def cafe_bytes(fields: list[FieldSpec], dim: int, hashed: list[int], hot: list[int], slots: int) -> int:
    rows = sum(hashed) + sum(hot)
    return storage_bytes(rows * dim, "fp32") + sum(hot) * slots * SLOT_BYTES + INDEX_PER_FIELD * len(fields)


@register_embedding("cafe", settings=CafeSettings, budgeted=True)
class CafeEmbedding(FeatureEmbedding):
    """One table: every field's hashed rows, then every field's hot rows; one sketch array of all fields' buckets."""

    def __init__(self, fields: list[FieldSpec], dim: int, hashed: list[int], hot: list[int], settings: CafeSettings,
                 threshold: float, init_std: float = 0.01) -> None:
        super().__init__()
        self.fields, self.width, self.settings, self.threshold = list(fields), dim, settings, float(threshold)
        n, slots = len(fields), settings.slots
        salts = mix(torch.arange(1, 2 * n + 1, dtype=torch.int64), torch.tensor(settings.seed, dtype=torch.int64))
        self.register_buffer("salts", salts.reshape(n, 2))
        self.register_buffer("hashed", torch.tensor(hashed, dtype=torch.int64))
        self.register_buffer("hot", torch.tensor(hot, dtype=torch.int64))
        self.register_buffer("inserted", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("sketch_ids", torch.full((sum(hot), slots), EMPTY, dtype=torch.int32))
        self.register_buffer("sketch_scores", torch.zeros(sum(hot), slots))
        self.register_buffer("sketch_rows", torch.full((sum(hot), slots), EMPTY, dtype=torch.int32))
        # derived from the stored counts, not stored: first hashed row, first bucket (= first hot row) of each field
        self.register_buffer("hash_firsts", torch.tensor([sum(hashed[:i]) for i in range(n)], dtype=torch.int64), persistent=False)
        self.register_buffer("hot_firsts", torch.tensor([sum(hot[:i]) for i in range(n)], dtype=torch.int64), persistent=False)
        self.register_buffer("direct", torch.tensor([m >= f.cardinality for m, f in zip(hashed, fields)]), persistent=False)
        self.hash_total = sum(hashed)
        self.table = nn.Parameter(torch.randn(sum(hashed) + sum(hot), dim) * init_std)
        self._pending: list[tuple[int, torch.Tensor]] = []

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: CafeSettings) -> "CafeEmbedding":
        if config.budget_bytes is None or config.dims is not None:
            raise ConfigError("embedding 'cafe' needs a budget (--budget) and one dim")
        if settings.slots < 1 or not 0 < settings.decay <= 1:
            raise ConfigError(f"embedding 'cafe': slots must be >= 1 and decay within (0, 1], got {settings.slots} and {settings.decay}")
        if settings.hash_rate is not None and not 0 < settings.hash_rate <= 1:
            raise ConfigError(f"embedding 'cafe': hash_rate must be within (0, 1], got {settings.hash_rate}")
        if settings.threshold is not None and settings.threshold <= 0:
            raise ConfigError(f"embedding 'cafe': threshold must be positive, got {settings.threshold}")
        if max(f.cardinality for f in fields) >= 2**31:
            raise ConfigError("embedding 'cafe' stores ids as int32: a field has 2^31 ids or more")
        cards = [f.cardinality for f in fields]
        rate = config.budget_bytes / storage_bytes(sum(cards) * config.dim, "fp32")
        threshold, hash_rate = scheduled(rate)
        threshold = settings.threshold if settings.threshold is not None else threshold
        hash_rate = settings.hash_rate if settings.hash_rate is not None else hash_rate
        total = (config.budget_bytes - INDEX_PER_FIELD * len(fields)) // storage_bytes(config.dim, "fp32")
        if total < len(fields):
            raise BudgetError(f"embedding 'cafe': budget of {config.budget_bytes} bytes is below one row per field "
                              f"({cafe_bytes(fields, config.dim, [1] * len(fields), [0] * len(fields), settings.slots)} bytes)")
        units = split_rows(cards, min(total, sum(cards)))
        hashed, hot = zip(*(split_field(u, c, config.dim, hash_rate, settings.slots) for u, c in zip(units, cards)))
        return cls(fields, config.dim, list(hashed), list(hot), settings, threshold, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: CafeSettings, meta: dict) -> "CafeEmbedding":
        return cls(fields, meta["dim"], meta["hashed"], meta["hot"], settings, meta["threshold"])

    def artifact_meta(self) -> dict:
        return {"dim": self.width, "hashed": self.hashed.tolist(), "hot": self.hot.tolist(), "threshold": self.threshold}

    def index_bytes(self) -> int:
        """Stored buffers only: the per-field first rows are recomputed from the stored counts."""
        return sum(tensor_bytes(b) for b in self.state_dict().values()) - tensor_bytes(self.table)

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    # -- serving -----------------------------------------------------------------
    def buckets_of(self, ids: torch.Tensor, fields: list[int] | int) -> torch.Tensor:
        """Global sketch bucket of each id (meaningless, but in range, for a field without a sketch)."""
        hot = self.hot[fields]
        local = mix(ids, self.salts[fields, 1]).remainder(hot.clamp(min=1))
        return (self.hot_firsts[fields] + local).clamp(max=max(len(self.sketch_ids) - 1, 0))

    def rows_of(self, ids: torch.Tensor, fields: list[int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Table row of each id (its hot row if the sketch holds it as hot, else its hashed row) and whether it is hot."""
        hashed = torch.where(self.direct[fields], ids, mix(ids, self.salts[fields, 0]).remainder(self.hashed[fields]))
        rows = self.hash_firsts[fields] + hashed
        if len(self.sketch_ids) == 0:
            return rows, torch.zeros_like(ids, dtype=torch.bool)
        bucket = self.buckets_of(ids, fields)
        slot_ids = self.sketch_ids.index_select(0, bucket.reshape(-1)).view(*bucket.shape, -1)  # row gathers: indexing with a
        slot_rows = self.sketch_rows.index_select(0, bucket.reshape(-1)).view(*bucket.shape, -1)  # 2-d index was 3x slower
        match = (slot_ids == ids.unsqueeze(-1)) & (slot_rows >= 0) & (self.hot[fields] > 0).unsqueeze(-1)
        is_hot = match.any(-1)
        hot_row = torch.where(match, slot_rows, 0).sum(-1)  # an integer sum is int64 already: no widening copy first
        return torch.where(is_hot, self.hash_total + hot_row, rows), is_hot

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        self._record(field, ids)
        return F.embedding(self.rows_of(ids, field)[0], self.table, sparse=True)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        for j, f in enumerate(fields):
            self._record(f, ids[:, j])
        return list(F.embedding(self.rows_of(ids, fields)[0], self.table, sparse=True).unbind(1))

    def field_table(self, field: int) -> torch.Tensor:
        ids = torch.arange(self.fields[field].cardinality, device=self.table.device)
        return F.embedding(self.rows_of(ids, field)[0], self.table, sparse=True)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table]

    # -- the sketch --------------------------------------------------------------
    def _record(self, field: int, ids: torch.Tensor) -> None:
        if self.training and torch.is_grad_enabled() and int(self.hot[field]) > 0:
            self._pending.append((field, ids.detach().reshape(-1)))

    def on_step_end(self, ctx: StepContext) -> None:
        """Count the ids this step's training lookups read, then decay, promote and migrate."""
        pending, self._pending = self._pending, []
        by_field: dict[int, list[torch.Tensor]] = {}
        for f, ids in pending:
            by_field.setdefault(f, []).append(ids)
        rows = self.observe_fields({f: torch.cat(chunks) for f, chunks in by_field.items()})
        if len(rows):
            where = torch.zeros(len(self.table), dtype=torch.bool, device=self.table.device)
            where[rows] = True
            ctx.reset_state(self.table, where)

    def observe(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        """Add occurrences of `ids` (any shape) of one field to its sketch; returns the table rows of ids that became hot."""
        return self.observe_fields({field: ids})

    @torch.no_grad()
    def observe_fields(self, ids_by_field: dict[int, torch.Tensor]) -> torch.Tensor:
        """One step's occurrences (field -> ids) added to the sketches at once; returns the table rows migrated."""
        buckets, values = [], []
        for f in sorted(ids_by_field):
            ids = ids_by_field[f].reshape(-1)
            if int(self.hot[f]) == 0 or ids.numel() == 0:
                continue
            if self.inserted[f] > 10 * int(self.hot[f]) * self.threshold:
                self._decay(f)
            self.inserted[f] += ids.numel()
            buckets.append(self.buckets_of(ids, f))
            values.append(ids)
        if not buckets:
            return torch.zeros(0, dtype=torch.long, device=self.table.device)
        pairs, counts = torch.unique(torch.cat(buckets) << 32 | torch.cat(values), return_counts=True)  # ids < 2^31
        bucket, uniq = pairs >> 32, pairs & 0xFFFFFFFF
        keys = self.sketch_ids[bucket]
        match = keys == uniq.unsqueeze(1).to(keys.dtype)
        present = match.any(1)
        slot = match.int().argmax(1)
        self.sketch_scores.index_put_((bucket[present], slot[present]), counts[present].float(), accumulate=True)
        self._admit(uniq[~present], counts[~present], bucket[~present])
        return self._promote()

    def _admit(self, ids: torch.Tensor, counts: torch.Tensor, bucket: torch.Tensor) -> None:
        """Newcomers: per bucket by count (then id), fill empty slots; the rest replace the lowest non-hot slot together."""
        if len(ids) == 0:
            return
        order = torch.argsort(ids, stable=True)
        order = order[torch.argsort(-counts[order], stable=True)]
        order = order[torch.argsort(bucket[order], stable=True)]
        ids, counts, bucket = ids[order], counts[order], bucket[order]
        starts = torch.searchsorted(bucket, bucket)  # first newcomer of the same bucket (bucket is sorted)
        rank = torch.arange(len(ids), device=ids.device) - starts
        empty = self.sketch_ids[bucket] == EMPTY
        n_empty = empty.sum(1)
        fits = rank < n_empty
        nth_empty = ((empty.long().cumsum(1) == (rank + 1).unsqueeze(1)) & empty).int().argmax(1)
        self.sketch_ids[bucket[fits], nth_empty[fits]] = ids[fits].to(torch.int32)
        self.sketch_scores[bucket[fits], nth_empty[fits]] = counts[fits].float()
        over = ~fits
        if not over.any():
            return
        spill = torch.zeros(len(self.sketch_ids), device=ids.device).index_add_(0, bucket[over], counts[over].float())
        heads = over & (rank == n_empty)  # the heaviest newcomer left over in its bucket
        hb = bucket[heads]
        scores = self.sketch_scores[hb].masked_fill((self.sketch_rows[hb] >= 0) | (self.sketch_ids[hb] == EMPTY), math.inf)
        lowest, slot = scores.min(1)
        ok = torch.isfinite(lowest)
        self.sketch_ids[hb[ok], slot[ok]] = ids[heads][ok].to(torch.int32)
        self.sketch_scores[hb[ok], slot[ok]] = lowest[ok] + spill[hb[ok]]

    def _promote(self) -> torch.Tensor:
        """Give free hot rows of each field to its recorded ids at or above the threshold, highest score first; copy
        each one's hashed row into its hot row. Returns the table rows migrated."""
        want = (self.sketch_ids != EMPTY) & (self.sketch_rows < 0) & (self.sketch_scores >= self.threshold)
        if not want.any():
            return torch.zeros(0, dtype=torch.long, device=self.table.device)
        owner = torch.repeat_interleave(torch.arange(len(self.fields), device=self.hot.device), self.hot)  # field of each bucket/hot row
        used = torch.zeros(len(owner), dtype=torch.bool, device=owner.device)
        used[self.sketch_rows[self.sketch_rows >= 0].long()] = True
        free = torch.nonzero(~used).flatten()  # ascending, so grouped by field
        cand = torch.nonzero(want)
        order = torch.argsort(-self.sketch_scores[want], stable=True)
        order = order[torch.argsort(owner[cand[order, 0]], stable=True)]
        cand = cand[order]
        field = owner[cand[:, 0]]
        rank = torch.arange(len(cand), device=cand.device) - torch.searchsorted(field, field)
        first_free = torch.searchsorted(owner[free], field)
        n_free = torch.bincount(owner[free], minlength=len(self.fields))[field]
        ok = rank < n_free
        cand, field, rows = cand[ok], field[ok], free[(first_free + rank)[ok]]
        self.sketch_rows[cand[:, 0], cand[:, 1]] = rows.to(torch.int32)
        keys = self.sketch_ids[cand[:, 0], cand[:, 1]].long()
        hashed = torch.where(self.direct[field], keys, mix(keys, self.salts[field, 0]).remainder(self.hashed[field]))
        self.table[self.hash_total + rows] = self.table[self.hash_firsts[field] + hashed]
        return self.hash_total + rows

    def _decay(self, field: int) -> None:
        """Scale the field's scores by `decay`; hot ids that fall below the threshold give their rows back."""
        first, count = int(self.hot_firsts[field]), int(self.hot[field])
        scores, rows = self.sketch_scores[first:first + count], self.sketch_rows[first:first + count]
        scores.mul_(self.settings.decay)
        rows.masked_fill_((rows >= 0) & (scores < self.threshold), EMPTY)
        self.inserted[field] = 0

    def stats(self) -> dict:
        """Hot rows in use and available, over all fields."""
        return {"hot_rows_used": int((self.sketch_rows >= 0).sum()), "hot_rows": int(self.hot.sum()),
                "hashed_rows": self.hash_total, "threshold": self.threshold}

    @property
    def note(self) -> str:
        s = self.stats()
        return (f"{s['hot_rows_used']} of {s['hot_rows']} hot rows in use (threshold {s['threshold']:g}), "
                f"{s['hashed_rows']} hashed rows; sketch {len(self.sketch_ids)} buckets x {self.settings.slots} slots")
