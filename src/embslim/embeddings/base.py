"""The interface every embedding method implements, and exact byte accounting.

A method implements `lookup(field, ids)`: ids of one field, any shape, to vectors of
that field's width. The base class does the rest once for every method: one vector per
field from a `SparseBatch` (single-valued fields, and multi-valued bags pooled by sum
or mean), unpooled sequence lookups `[B, L, d]`, whole-table reads, bytes, export and
loading. A method whose fields share storage may override `lookup_fields` to serve
all single-valued fields with one gather.

Bytes come from one table of bits per stored value (`BITS`, which knows 4- and 2-bit
codes); serving bytes count every tensor an exported artifact holds (weights, codes,
scales, offsets, hash salts), and training adds Adam's moment buffers and any optimiser
state a method keeps itself (`state_bytes`). A trained embedding that can be cut to a smaller
budget without retraining implements `sliced` (what `embslim slice` calls).
"""
from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.settings import NoSettings, settings_dict

Stage = Literal["serve", "train"]
BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int64": 64, "int32": 32, "int16": 16, "int8": 8, "uint8": 8, "int4": 4, "int2": 2}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "int64", torch.int32: "int32",
               torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8"}
BYTES_PER_ELEMENT = {dtype: BITS[name] // 8 for dtype, name in DTYPE_NAMES.items()}
ADAM_STATE_COPIES = 2


def storage_bytes(count: int, kind: str = "fp32") -> int:
    """Bytes of `count` values stored as `kind` (a key of BITS), packed: two int4 or four int2 per byte."""
    return math.ceil(count * BITS[kind] / 8)


def tensor_bytes(t: torch.Tensor) -> int:
    return storage_bytes(t.numel(), DTYPE_NAMES[t.dtype])


@dataclass(frozen=True)
class EmbeddingConfig:
    """What to build: `method` from the registry and one of dim, per-field dims, or budget_bytes.

    `options` holds the method's settings by name (typed values or `KEY=VALUE` strings);
    the registry turns them into the method's frozen settings dataclass and rejects unknown keys.
    """

    method: str = "full"
    dim: int = 16
    dims: dict[str, int] | None = None
    budget_bytes: int | None = None
    init_std: float = 0.01
    options: dict = field(default_factory=dict)


@dataclass
class StepContext:
    """What a method's training hooks see at one optimiser step.

    `step` counts finished steps (1 after the first), `total_steps` is the run's plan
    (epochs x batches per epoch; early stopping may end it sooner), so schedules know
    where they are. `reset_state` lets a method that changes which entries exist (regrowth,
    rewinding) clear the optimiser moments of exactly those entries.
    """

    step: int
    total_steps: int
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)

    @torch.no_grad()
    def reset_state(self, param: torch.Tensor, where: torch.Tensor | None = None) -> None:
        """Zero the optimiser state of `param`: all of it, or the entries a boolean mask of its shape
        (or of its leading dimension: whole rows) selects; per-row state is zeroed for every row with a
        selected entry. Step counters are left alone."""
        for opt in self.optimizers:
            state = opt.state.get(param)
            if not state:
                continue
            for value in state.values():
                if not torch.is_tensor(value) or value.dim() == 0:
                    continue
                if where is None and value.shape in (param.shape, param.shape[:1]):
                    value.zero_()
                elif value.shape == param.shape:
                    value[where] = 0
                elif value.shape == param.shape[:1]:  # per-row state (row-wise Adagrad): rows with any entry selected
                    value[where if where.dim() == 1 else where.reshape(len(where), -1).any(dim=1)] = 0


@dataclass
class SliceContext:
    """What a method sees when `embslim slice` asks it for a smaller copy of a trained embedding.

    `val_loss(embedding)` is the validation loss of the trained model with `embedding` in place
    of its own (a capped, seeded sample of the validation rows), the cheap importance measure;
    `model` and `data` are the trained `Recommender` and its `PreparedData` for methods that score
    with more (DNIS's loss-per-byte scores); `options` holds what the source run recorded beyond
    the embedding config (the DNIS search settings); the method writes how it chose into `record`,
    which goes to results.json's `slice.choice`. `halves`, when given, is the same loss on two disjoint
    halves of those rows: a method making many fine choices picks on the first and compares its
    candidates on the second, so that its selection does not fit the noise of the rows it is judged on.
    `precisions` are the storage precisions the copy may use ("fp32", "fp16", "int8", ...: nested tries each).
    A copy whose stored values take no gradients (codes) provides `fine_tune_form()` (the trainable fp32
    module it was stored from) and `requantized(module)`, so that slicing fine-tunes before it quantizes.
    """

    val_loss: Callable[["FeatureEmbedding"], float]
    model: Any = None
    data: Any = None
    options: dict = field(default_factory=dict)
    seed: int = 0
    record: dict = field(default_factory=dict)
    halves: tuple[Callable[["FeatureEmbedding"], float], Callable[["FeatureEmbedding"], float]] | None = None
    precisions: tuple[str, ...] = ("fp32",)


def field_meta(fields: list[FieldSpec]) -> list[dict]:
    return [{"name": f.name, "cardinality": f.cardinality, "multivalued": f.multivalued, "pooling": f.pooling, "side": f.side} for f in fields]


def fields_from_meta(meta: list[dict]) -> list[FieldSpec]:
    return [FieldSpec(counts=np.zeros(m["cardinality"], dtype=np.int64), **m) for m in meta]


class FeatureEmbedding(nn.Module, ABC):
    """Per-field embedding vectors from sparse ids; the one interface all methods share.

    Registered methods also provide `from_config(fields, config, settings)` and
    `from_artifact_meta(fields, settings, meta)` classmethods (see registry.py).
    """

    fields: list[FieldSpec]
    method_name: ClassVar[str] = "?"
    settings: Any = NoSettings()
    note: str | None = None

    @property
    def accepts_raw_ids(self) -> bool:
        """Whether ids may be any int64 (hashed raw values, online training) rather than below each field's
        cardinality; when False, the online trainer gives the method hashed ids modulo the cardinality."""
        return False

    @property
    @abstractmethod
    def dims(self) -> list[int]:
        """Output width of each field, in field order."""

    @abstractmethod
    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of ids of field number `field`: shape ids.shape + (dims[field],)."""

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        """[B, k] ids of k single-valued fields -> k tensors [B, d]; override to batch the gathers."""
        return [self.lookup(f, ids[:, j]) for j, f in enumerate(fields)]

    def forward(self, batch: SparseBatch) -> list[torch.Tensor]:
        """One [B, dims[i]] tensor per field; bags pooled by their field's pooling."""
        out: list[torch.Tensor | None] = [None] * len(self.fields)
        single = [i for i, f in enumerate(self.fields) if not f.multivalued]
        if single:
            for i, vec in zip(single, self.lookup_fields(batch.ids, single)):
                out[i] = vec
        for i, f in enumerate(self.fields):
            if f.multivalued:
                out[i] = self.pool(i, *batch.bags[f.name])
        return out

    def stacked(self, batch: SparseBatch) -> torch.Tensor | None:
        """Every field's vector as one [B, F, d] tensor, where the method can give it without a split per field
        (backbones then skip the per-field list and its re-concatenation); None where it cannot."""
        return None

    def pool(self, field: int, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Sum or mean of each bag (values, offsets[B+1]) of a multi-valued field; empty bags are zero."""
        lengths = offsets[1:] - offsets[:-1]
        rows = lengths.shape[0]  # not len(): a traced program (`embslim export`) keeps shapes symbolic, len() would freeze them
        bag = torch.repeat_interleave(torch.arange(rows, device=values.device), lengths)
        vecs = self.lookup(field, values)
        pooled = vecs.new_zeros((rows, vecs.shape[-1])).index_add(0, bag, vecs)
        if self.fields[field].pooling == "mean":
            pooled = pooled / lengths.clamp(min=1).unsqueeze(1).to(pooled.dtype)
        return pooled

    def lookup_sequence(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        """Unpooled lookups for sequence models: [B, L] ids padded with -1 -> [B, L, d], zeros at padding."""
        mask = (ids >= 0).unsqueeze(-1)
        return self.lookup(field, ids.clamp(min=0)) * mask

    def field_table(self, field: int) -> torch.Tensor:
        """Every row of a field's table as served: [cardinality, d] (graph models, retrieval)."""
        ids = torch.arange(self.fields[field].cardinality, device=self._device())
        return self.lookup(field, ids)

    def _device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive sparse gradients (updated by a sparse optimizer)."""
        return []

    def search_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters trained on validation loss by a search, never by the trainer."""
        return []

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def weight_bytes(self) -> int:
        """Bytes of the trainable values."""
        return sum(tensor_bytes(p) for p in self.parameters())

    def index_bytes(self) -> int:
        """Bytes of the non-trainable structures serving needs (offsets, codes, scales, hash salts)."""
        return sum(tensor_bytes(b) for b in self.buffers())

    def state_bytes(self) -> int:
        """Bytes of optimiser state a method keeps itself (one that updates its own storage, such as lpt); 0 for most."""
        return 0

    def memory_bytes(self, stage: Stage = "serve") -> int:
        """Exact bytes: weights and indices; in training also Adam's moment buffers of the weights and the method's own state."""
        weights = self.weight_bytes()
        if stage == "train":
            return weights * (1 + ADAM_STATE_COPIES) + self.index_bytes() + self.state_bytes()
        return weights + self.index_bytes()

    def aux_loss(self) -> torch.Tensor | None:
        """A regulariser the trainer adds to the loss (search methods); None for most."""
        return None

    def train_loss(self, task_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch given `task_loss()`, which runs the model on the batch
        as the embedding now stands; a method whose loss needs several passes (nested widths) overrides it."""
        return task_loss()

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Called after backward, before the optimisers step: read or edit gradients (masks, regrowth scores)."""

    def on_step_end(self, ctx: StepContext) -> None:
        """Called after each optimiser step (clamping, pruning schedules, re-applying masks)."""

    def size_is_final(self) -> bool:
        """False while a schedule is still shrinking the table: the trainer neither keeps such an epoch as
        the best nor counts it toward early stopping, so the result always has the final size."""
        return True

    def sliced(self, budget_bytes: int, context: SliceContext) -> "FeatureEmbedding | None":
        """A servable copy of this trained embedding within `budget_bytes`, chosen without retraining
        (`embslim slice`), or None when the method cannot be sliced (the default).

        The copy must have the same `dims` (the backbone is reused as trained), serve at most
        `budget_bytes` (`memory_bytes("serve")`), and export and reload like any artifact; a budget it
        cannot reach is a one-line `BudgetError`. Nested tables choose per-field prefix widths, DNIS prunes
        (block, dimension) pairs by its scores; a masked method (magnitude, PEP) would return its mask at a
        stricter threshold.
        """
        return None

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        """What an artifact stores: by default every parameter and buffer, as served."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def artifact_meta(self) -> dict:
        """Shape information beyond fields and settings needed to rebuild the module (e.g. chosen dims)."""
        return {}

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(tensors)

    def joined_inputs(self) -> list[str]:
        """Artifact tensors a served program reads best as one flat run of values: the serving runtime lays them
        out back to back in one buffer (each still its own view, no second copy) and passes that buffer as well
        (`embslim export`, `use_joined_inputs`). None by default (an empty list)."""
        return []

    def use_joined_inputs(self, flat: torch.Tensor | None) -> None:
        """Read the `joined_inputs` tensors from `flat` (their values back to back, in that order), or stop (None)."""

    def export(self, path: Path) -> None:
        """Write a compact, servable artifact: safetensors, with fields and settings in its metadata."""
        meta = {"method": self.method_name, "fields": field_meta(self.fields), "settings": settings_dict(self.settings),
                **self.artifact_meta()}
        save_file(self.artifact_tensors(), str(path), metadata={"embslim": json.dumps(meta)})
