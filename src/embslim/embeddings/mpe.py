"""Mixed-precision embeddings: a bit width per frequency group, searched while training (MPE, Li et al. 2024,
arXiv 2409.20305; reference code Leopold1423/mpe).

Ids of each field, ranked by TRAINING frequency (`FieldSpec.counts`; the reference code counts
validation and test ids too), are cut into equal-size groups (128 by default, fewer for small
fields and tiny budgets). Each group has logits over the widths 0..max_bits; width 0 drops the
group's rows (zero vectors). Every row is fake-quantised at width b with an LSQ+-style learned
step per width (log-parametrised) and a learned offset per dimension, rounding straight-through.

Search (the first `search_fraction` of the planned steps): the forward uses each group's current
hard width and the gradient to the logits is that of the softmax(logits / temperature) mixture of
all widths (straight-through), so the model always trains at the bytes it would serve; the
temperature anneals from `start_temperature` to `temperature` (the reference's 3e-3, fixed there)
so the search does not saturate in its first steps. The penalty `aux_loss` is lambda * expected
bytes / budget; lambda follows a multiplicative controller that pushes the argmax widths' bytes
toward the budget. After every step the widths are the argmax REPAIRED to the budget: a Lagrangian
bisection (per group the width maximising logit - mu * bytes, i.e. least logit lost per byte
saved; mu < 0 spends spare bytes when `fill` is on) and a greedy pass over the groups at the
breakpoint, so bytes never exceed the budget. Then the widths are frozen and training continues
(fine-tuning, not the reference's retrain from the initial weights) at them; `size_is_final()`
is False until then. The reference shares one step per width and one offset per dimension across
fields, and so does this; its penalty weights bits by 1/frequency, this one counts bytes.

Serving bytes (exactly what `export` writes): packed codes (each row ceil(d * b / 8) bytes at its
group's width b, little-endian bit order), a width (uint8) and a byte offset (int32) per group, a
group size, first group (int32) and first row (int64) per field, the steps (fp32 per width) and
offsets (fp32 per dimension), and, for a field whose ids are not already in descending training
frequency, its int32 rank of every id (the remap costs its bytes). The data encoders already rank
ids by training frequency, so normally no remap is stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding, StepContext, storage_bytes, tensor_bytes
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

GROUP_BYTES = storage_bytes(1, "uint8") + storage_bytes(1, "int32")  # width and byte offset of a group
FIELD_BYTES = storage_bytes(1, "int64") + 2 * storage_bytes(1, "int32")  # first row, group size, first group of a field
SEARCH, FIXED = 0, 1


@dataclass(frozen=True)
class MPESettings:
    """groups: most groups per field; min_group_rows: fewest rows a group holds; max_overhead: share of the budget
    the group bookkeeping may take (fewer groups otherwise); max_bits: widest width (widths 0..max_bits);
    temperature: of the softmax over widths at the end of the search, annealed geometrically from start_temperature;
    fill: widen groups into bytes the search leaves spare; search_fraction: share of the planned steps that searches
    before the widths are frozen; penalty: initial lambda; penalty_rate: speed of the lambda controller (0 keeps
    lambda fixed); step_lr_scale: the learned log-steps are this times their parameter, so Adam moves them faster."""

    groups: int = 128
    min_group_rows: int = 8
    max_overhead: float = 0.1
    max_bits: int = 6
    temperature: float = 3e-3
    start_temperature: float = 1.0
    fill: bool = True
    search_fraction: float = 0.4
    penalty: float = 1e-2
    penalty_rate: float = 0.05
    step_lr_scale: float = 10.0


def row_bytes(dim: int, bits: np.ndarray | int) -> np.ndarray | int:
    """Bytes of one stored row of `dim` codes of `bits` bits, packed (ceil(dim * bits / 8))."""
    return (dim * np.asarray(bits) + 7) // 8


def frequency_ranks(field: FieldSpec) -> np.ndarray | None:
    """Rank of every id by descending training count (ties by id); None when ids are already in that order
    after the OOV id 0, as the data encoders make them (then no remap is stored)."""
    counts = field.counts
    if len(counts) < 3 or bool(np.all(np.diff(counts[1:]) <= 0)):
        return None
    order = np.argsort(-counts, kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def group_sizes(fields: list[FieldSpec], settings: MPESettings, budget_bytes: int | None) -> list[int]:
    """Rows per group of each field: `groups` groups, fewer when they would hold under `min_group_rows` rows or
    their bookkeeping would take more than `max_overhead` of the budget (the largest counts are halved)."""
    counts = [max(1, min(settings.groups, f.cardinality // max(settings.min_group_rows, 1))) for f in fields]
    sizes = [math.ceil(f.cardinality / g) for f, g in zip(fields, counts)]
    if budget_bytes is not None:
        while sum(math.ceil(f.cardinality / s) for f, s in zip(fields, sizes)) * GROUP_BYTES > settings.max_overhead * budget_bytes:
            groups = [math.ceil(f.cardinality / s) for f, s in zip(fields, sizes)]
            widest = int(np.argmax(groups))
            if groups[widest] == 1:
                break
            sizes[widest] = math.ceil(fields[widest].cardinality / math.ceil(groups[widest] / 2))
    return sizes


def fixed_bytes(fields: list[FieldSpec], dim: int, max_bits: int, groups: int) -> int:
    """Serving bytes besides the codes: per-field and per-group index, steps, offsets and any stored remap."""
    remaps = sum(storage_bytes(f.cardinality, "int32") for f in fields if frequency_ranks(f) is not None)
    return len(fields) * FIELD_BYTES + groups * GROUP_BYTES + storage_bytes(max_bits + dim, "fp32") + remaps


def choose_widths(logits: np.ndarray, cost: np.ndarray, available: int | None, order: np.ndarray, fill: bool = True) -> np.ndarray:
    """Per group the width index maximising logit - mu * cost: mu = 0 (the argmax) when that fits `available`
    bytes and `fill` is off, else the smallest mu (negative when filling spare bytes) whose total fits; then the
    groups that a slightly smaller mu would widen are widened greedily (most logit per byte first, then `order`)
    while they fit. Deterministic; ties go to the wider width. `cost[g, b]` are bytes, increasing in b."""
    def pick(mu: float) -> np.ndarray:
        score = logits - mu * cost
        return score.shape[1] - 1 - np.argmax(score[:, ::-1], axis=1)

    def total(widths: np.ndarray) -> float:
        return cost[rows, widths].sum()

    rows = np.arange(len(logits))
    if available is None or (not fill and total(pick(0.0)) <= available):
        return pick(0.0)
    spread = float(logits.max() - logits.min())
    step = np.diff(cost, axis=1)
    bound = 2 * spread / max(float(step[step > 0].min()) if (step > 0).any() else 1.0, 1e-12) + 1e-9
    lo, hi = (-bound if fill else 0.0), bound
    if total(pick(lo)) <= available:
        return pick(lo)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if total(pick(mid)) <= available else (mid, hi)
    chosen, wider = pick(hi), pick(lo)
    left = available - total(chosen)
    cand = np.flatnonzero(wider != chosen)
    extra = cost[cand, wider[cand]] - cost[cand, chosen[cand]]
    rate = (logits[cand, wider[cand]] - logits[cand, chosen[cand]]) / np.maximum(extra, 1e-12)
    for k in np.lexsort((order[cand], -rate)):
        if extra[k] <= left:
            chosen[cand[k]] = wider[cand[k]]
            left -= extra[k]
    return chosen


def dequantize(q: torch.Tensor, bits: torch.Tensor, steps: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Integer codes q [N, d] (signed, as floats) at per-row widths -> values; width-0 rows are zero.
    `steps` has one entry per width 0..max_bits (entry 0 unused). Shared by training and serving."""
    return (q * steps[bits].unsqueeze(-1) + offset) * (bits > 0).unsqueeze(-1).to(q.dtype)


def code_range(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed code range [-2^(b-1), 2^(b-1) - 1] per width (0 for width 0)."""
    half = torch.where(bits > 0, torch.pow(2.0, bits.float() - 1), torch.zeros_like(bits, dtype=torch.float32))
    return -half, torch.clamp(half - 1, min=0)


def quantize(w: torch.Tensor, bits: torch.Tensor, steps: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Signed integer codes (as floats) of rows w [N, d] at per-row widths, rounding to nearest."""
    lo, hi = code_range(bits)
    x = (w - offset) / steps[bits].unsqueeze(-1)
    return torch.round(torch.minimum(torch.maximum(x, lo.unsqueeze(-1)), hi.unsqueeze(-1)))


def fake_quantize(w: torch.Tensor, bits: torch.Tensor, steps: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """`dequantize(quantize(w))` with straight-through rounding: LSQ+ gradients to w, the steps and the offset."""
    lo, hi = code_range(bits)
    x = (w - offset) / steps[bits].unsqueeze(-1)
    x = torch.minimum(torch.maximum(x, lo.unsqueeze(-1)), hi.unsqueeze(-1))
    q = x + (torch.round(x) - x).detach()
    return dequantize(q, bits, steps, offset)


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes [n, d] < 2^bits -> [n, ceil(d * bits / 8)] uint8, bit k of value j at bit j * bits + k of the row."""
    n, d = codes.shape
    flat = ((codes.unsqueeze(-1) >> torch.arange(bits)) & 1).reshape(n, d * bits)
    flat = F.pad(flat, (0, -(d * bits) % 8)).view(n, -1, 8)
    return (flat << torch.arange(8)).sum(-1).to(torch.uint8)


def unpack_rows(blob: torch.Tensor, start: torch.Tensor, bits: torch.Tensor, dim: int) -> torch.Tensor:
    """Signed codes [N, dim] (as floats) of the rows starting at byte `start` of `blob` at widths `bits`."""
    if blob.numel() == 0:
        return torch.zeros(len(start), dim, device=blob.device)
    pos = torch.arange(dim, device=blob.device) * bits.unsqueeze(-1)
    byte = start.unsqueeze(-1) + pos // 8
    last = blob.numel() - 1
    word = blob[byte.clamp(max=last)].long() | (blob[(byte + 1).clamp(max=last)].long() << 8)
    codes = (word >> (pos % 8)) & ((1 << bits.unsqueeze(-1)) - 1)
    half = torch.where(bits > 0, 1 << (bits - 1).clamp(min=0), torch.zeros_like(bits))
    return (codes - half.unsqueeze(-1)).float()


class GroupIndex:
    """Where each id's row sits: field -> (first row, group size, first group, optional rank remap)."""

    def __init__(self, fields: list[FieldSpec], sizes: list[int]) -> None:
        self.cards = [f.cardinality for f in fields]
        self.sizes = list(sizes)
        self.groups = [math.ceil(c / s) for c, s in zip(self.cards, self.sizes)]
        self.first_rows = np.r_[0, np.cumsum(self.cards)[:-1]].astype(np.int64)
        self.first_groups = np.r_[0, np.cumsum(self.groups)[:-1]].astype(np.int64)
        self.total_groups = int(sum(self.groups))
        rows = np.concatenate([np.minimum(s, c - s * np.arange(g)) for c, s, g in zip(self.cards, self.sizes, self.groups)])
        self.group_rows = rows.astype(np.int64)
        self.local = np.concatenate([np.arange(g) for g in self.groups])
        self.group_starts = np.concatenate([r + s * np.arange(g) for r, s, g in zip(self.first_rows, self.sizes, self.groups)]).astype(np.int64)


@register_embedding("mpe", settings=MPESettings, budgeted=True)
class MPEEmbedding(FeatureEmbedding):
    """Float master rows, fake-quantised at a searched width per frequency group; serves packed integer codes."""

    def __init__(self, fields: list[FieldSpec], dim: int, settings: MPESettings, budget_bytes: int | None,
                 init_std: float = 0.01) -> None:
        super().__init__()
        check_settings(settings)
        self.fields, self.width, self.settings, self.budget_bytes = list(fields), dim, settings, budget_bytes
        self.index = GroupIndex(fields, group_sizes(fields, settings, budget_bytes))
        self.fixed = fixed_bytes(fields, dim, settings.max_bits, self.index.total_groups)
        if budget_bytes is not None and self.fixed > budget_bytes:
            raise BudgetError(f"embedding 'mpe': budget of {budget_bytes} bytes is below its index alone ({self.fixed} bytes, "
                              f"every group dropped)")
        ranks = [frequency_ranks(f) for f in fields]
        self.remapped = [i for i, r in enumerate(ranks) if r is not None]
        for i in self.remapped:
            self.register_buffer(f"rank_{i}", torch.from_numpy(ranks[i]))
        rows = sum(self.index.cards)
        self.weight = nn.Parameter(torch.randn(rows, dim) * init_std)
        bits = torch.arange(1, settings.max_bits + 1, dtype=torch.float32)
        lsq_init = 2 * self.weight.detach().abs().mean() / torch.sqrt(torch.pow(2.0, bits - 1))
        self.log_step = nn.Parameter(torch.log(lsq_init) / settings.step_lr_scale)
        self.offset = nn.Parameter(torch.zeros(dim))
        self.logits = nn.Parameter(torch.zeros(self.index.total_groups, settings.max_bits + 1))
        self.register_buffer("widths", torch.zeros(self.index.total_groups, dtype=torch.int64))
        self.register_buffer("lam", torch.tensor(float(settings.penalty)))
        self.register_buffer("phase", torch.tensor(SEARCH))
        self.register_buffer("tau", torch.tensor(float(settings.start_temperature)))
        self.register_buffer("group_of_row", torch.from_numpy(np.repeat(np.arange(self.index.total_groups), self.index.group_rows)))
        self._cost = self.index.group_rows[:, None] * row_bytes(dim, np.arange(settings.max_bits + 1))[None, :]
        self._order = self.index.local.astype(np.float64)
        self.repair()

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: MPESettings) -> "MPEEmbedding":
        if config.dims is not None:
            raise ConfigError("embedding 'mpe' takes one dim, not per-field dims")
        return cls(fields, config.dim, settings, config.budget_bytes, config.init_std)

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: MPESettings, meta: dict) -> "MPEServed":
        return MPEServed(fields, settings, meta)

    # -- widths ---------------------------------------------------------------
    def steps(self) -> torch.Tensor:
        """Step size of every width 0..max_bits (entry 0 is unused: width-0 rows are zero)."""
        return torch.cat([self.log_step.new_ones(1), torch.exp(self.log_step * self.settings.step_lr_scale)])

    def code_bytes(self, widths: np.ndarray) -> int:
        return int(self._cost[np.arange(len(widths)), widths].sum())

    @torch.no_grad()
    def repair(self) -> None:
        """Widths := the logits' argmax, lowered where needed (least logit per byte first) to fit the budget."""
        available = None if self.budget_bytes is None else self.budget_bytes - self.fixed
        chosen = choose_widths(self.logits.detach().double().cpu().numpy(), self._cost.astype(np.float64), available, self._order,
                               self.settings.fill)
        self.widths.copy_(torch.from_numpy(chosen))

    def size_is_final(self) -> bool:
        return int(self.phase) == FIXED

    def aux_loss(self) -> torch.Tensor | None:
        """lambda * expected serving bytes of the codes under the softmax over widths, over the budget (or full size)."""
        if int(self.phase) != SEARCH:
            return None
        probs = torch.softmax(self.logits / self.tau, dim=1)
        expected = (probs * torch.from_numpy(self._cost).to(probs)).sum()
        return self.lam * expected / self.norm_bytes()

    def norm_bytes(self) -> int:
        return self.budget_bytes if self.budget_bytes is not None else storage_bytes(sum(self.index.cards) * self.width, "fp32")

    @torch.no_grad()
    def on_step_end(self, ctx: StepContext) -> None:
        """In the search: steer lambda toward the budget, repair the widths, and freeze them once the search share is over."""
        if int(self.phase) != SEARCH:
            return
        if self.budget_bytes is not None and self.settings.penalty_rate > 0:
            wanted = self.code_bytes(self.logits.detach().flip(1).argmax(1).neg().add(self.settings.max_bits).cpu().numpy())
            ratio = (self.fixed + wanted) / self.budget_bytes - 1
            self.lam.mul_(math.exp(float(np.clip(self.settings.penalty_rate * ratio, -self.settings.penalty_rate, self.settings.penalty_rate))))
        self.repair()
        end = math.ceil(self.settings.search_fraction * ctx.total_steps)
        progress = min(ctx.step / max(end, 1), 1.0)
        self.tau.fill_(self.settings.start_temperature * (self.settings.temperature / self.settings.start_temperature) ** progress)
        if ctx.step >= end:
            self.phase.fill_(FIXED)

    # -- lookups --------------------------------------------------------------
    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def rows_of(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        ranks = getattr(self, f"rank_{field}")[ids] if field in self.remapped else ids
        return ranks + int(self.index.first_rows[field])

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        rows = self.rows_of(field, ids.reshape(-1))
        return self.values(rows).reshape(*ids.shape, self.width)

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        rows = torch.stack([self.rows_of(f, ids[:, j]) for j, f in enumerate(fields)], dim=1)
        vecs = self.values(rows.reshape(-1)).reshape(*rows.shape, self.width)
        return list(vecs.unbind(1))

    def values(self, rows: torch.Tensor) -> torch.Tensor:
        """Vectors of global rows: as served, or in training fake-quantised with straight-through gradients."""
        groups = self.group_of_row[rows]
        bits = self.widths[groups]
        w = F.embedding(rows, self.weight, sparse=True)
        steps = self.steps()
        if not (self.training and torch.is_grad_enabled()):
            return dequantize(quantize(w, bits, steps, self.offset), bits, steps, self.offset)
        hard = fake_quantize(w, bits, steps, self.offset)
        if int(self.phase) != SEARCH:
            return hard
        probs = torch.softmax(self.logits[groups] / self.tau, dim=1)
        with torch.no_grad():
            every = torch.arange(self.settings.max_bits + 1, device=rows.device)
            copies = torch.stack([dequantize(quantize(w, every[b].expand(len(rows)), steps, self.offset), every[b].expand(len(rows)), steps,
                                             self.offset) for b in range(len(every))], dim=1)
        soft = (probs.unsqueeze(-1) * copies).sum(1)
        return hard + (soft - soft.detach())

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    # -- bytes and export -----------------------------------------------------
    def memory_bytes(self, stage: str = "serve") -> int:
        """Serving: the artifact's tensors. Training adds the float master copies with two Adam moments and the search state."""
        serve = self.fixed + self.code_bytes(self.widths.cpu().numpy())
        return serve if stage == "serve" else serve + 2 * self.weight_bytes() + self.state_bytes()

    def state_bytes(self) -> int:
        """The float master values themselves and the buffers only training needs (widths, lambda, phase, temperature, row groups)."""
        return self.weight_bytes() + sum(tensor_bytes(b) for b in (self.widths, self.lam, self.phase, self.tau, self.group_of_row))

    def parameter_count(self) -> int:
        """Stored values: the codes of kept rows (each one value at its width), steps and offsets."""
        kept = self.index.group_rows[self.widths.cpu().numpy() > 0].sum()
        return int(kept) * self.width + self.settings.max_bits + self.width

    @property
    def note(self) -> str:
        return width_note(self.index.group_rows, self.widths.cpu().numpy(), self.width, self.fixed, self.code_bytes(self.widths.cpu().numpy()))

    @torch.no_grad()
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        widths = self.widths.cpu()
        steps = self.steps().detach().cpu()
        groups_bytes = torch.from_numpy(self._cost[np.arange(len(widths)), widths.numpy()])
        weight, offset = self.weight.detach().cpu(), self.offset.detach().cpu()
        blobs = []
        for g in np.flatnonzero(widths.numpy() > 0):
            b, start = int(widths[g]), int(self.index.group_starts[g])
            w = weight[start:start + int(self.index.group_rows[g])]
            q = quantize(w, torch.full((len(w),), b), steps, offset)
            blobs.append(pack_rows((q + 2 ** (b - 1)).long(), b).reshape(-1))
        tensors = {
            "first_rows": torch.from_numpy(self.index.first_rows),
            "group_size": torch.tensor(self.index.sizes, dtype=torch.int32),
            "first_group": torch.from_numpy(self.index.first_groups.astype(np.int32)),
            "group_bits": widths.to(torch.uint8),
            "group_offset": torch.cat([torch.zeros(1, dtype=torch.int64), groups_bytes.cumsum(0)[:-1]]).to(torch.int32),
            "codes": torch.cat(blobs) if blobs else torch.zeros(0, dtype=torch.uint8),
            "steps": steps[1:].clone(),
            "offset": self.offset.detach().cpu().clone(),
        }
        tensors.update({f"rank_{i}": getattr(self, f"rank_{i}").cpu().to(torch.int32) for i in self.remapped})
        return tensors

    def artifact_meta(self) -> dict:
        return {"dim": self.width, "groups": self.index.groups, "code_bytes": self.code_bytes(self.widths.cpu().numpy()),
                "remapped": self.remapped}


def check_settings(s: MPESettings) -> None:
    if not 1 <= s.max_bits <= 8:
        raise ConfigError(f"embedding 'mpe': max_bits must be in 1..8, got {s.max_bits}")
    if s.groups < 1 or s.min_group_rows < 1:
        raise ConfigError(f"embedding 'mpe': groups and min_group_rows must be >= 1, got {s.groups} and {s.min_group_rows}")
    if s.temperature <= 0 or s.start_temperature <= 0 or s.step_lr_scale <= 0 or s.penalty < 0 or s.penalty_rate < 0:
        raise ConfigError("embedding 'mpe': temperatures and step_lr_scale must be positive, penalty and penalty_rate non-negative")
    if not 0 <= s.search_fraction <= 1 or not 0 < s.max_overhead <= 1:
        raise ConfigError(f"embedding 'mpe': search_fraction must be in [0, 1] and max_overhead in (0, 1], "
                          f"got {s.search_fraction} and {s.max_overhead}")


def width_note(group_rows: np.ndarray, widths: np.ndarray, dim: int, fixed: int, codes: int) -> str:
    """Where the bytes went: rows per width, and how much dropping rows saved against keeping them at the mean kept width."""
    rows = group_rows.sum()
    shares = ", ".join(f"{b}b {group_rows[widths == b].sum() / rows:.1%}" for b in sorted(set(widths.tolist())))
    kept = group_rows[widths > 0]
    mean_bits = float((group_rows * widths)[widths > 0].sum() / kept.sum()) if kept.size else 0.0
    return (f"rows by width: {shares}; kept rows average {mean_bits:.2f} bits; codes {codes} bytes + index {fixed} bytes "
            f"(fp32 rows would take {rows * dim * 4})")


class MPEServed(FeatureEmbedding):
    """A loaded MPE artifact: packed codes per group, read back with the same dequantisation as training's eval lookups."""

    method_name = "mpe"

    def __init__(self, fields: list[FieldSpec], settings: MPESettings, meta: dict) -> None:
        super().__init__()
        self.fields, self.settings, self.width = list(fields), settings, int(meta["dim"])
        self.remapped = list(meta["remapped"])
        groups, n = sum(meta["groups"]), len(fields)
        self.register_buffer("first_rows", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("group_size", torch.zeros(n, dtype=torch.int32))
        self.register_buffer("first_group", torch.zeros(n, dtype=torch.int32))
        self.register_buffer("group_bits", torch.zeros(groups, dtype=torch.uint8))
        self.register_buffer("group_offset", torch.zeros(groups, dtype=torch.int32))
        self.register_buffer("codes", torch.zeros(int(meta["code_bytes"]), dtype=torch.uint8))
        self.register_buffer("steps", torch.zeros(settings.max_bits))
        self.register_buffer("offset", torch.zeros(self.width))
        for i in self.remapped:
            self.register_buffer(f"rank_{i}", torch.zeros(fields[i].cardinality, dtype=torch.int32))

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        ranks = getattr(self, f"rank_{field}")[flat].long() if field in self.remapped else flat
        size = int(self.group_size[field])
        local = torch.div(ranks, size, rounding_mode="floor")
        groups = int(self.first_group[field]) + local
        bits = self.group_bits[groups].long()
        start = self.group_offset[groups].long() + (ranks - local * size) * ((self.width * bits + 7) // 8)
        q = unpack_rows(self.codes, start, bits, self.width)
        steps = torch.cat([self.steps.new_ones(1), self.steps])
        return dequantize(q, bits, steps, self.offset).reshape(*ids.shape, self.width)

    @property
    def note(self) -> str | None:
        return None
