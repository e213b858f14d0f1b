"""Low-precision training of the tables themselves: LPT, the non-adaptive variant of ALPT (Li et al., AAAI 2023,
"Adaptive Low-Precision Training for Embeddings in Click-Through Rate Prediction").

The table lives as int8 (or int16) codes with one scale per row, during training as well:
no float copy exists between steps. A training lookup gathers the batch's rows, dequantises
them into a float leaf that requires grad, and the model runs on it; after the optimiser
step `on_step_end` applies the update to those rows in float and re-quantises them with
STOCHASTIC rounding (floor(x + u), u ~ U[0, 1)), which is unbiased, so updates smaller than
a quantisation step survive in expectation: the paper proves it converges faster than
deterministic rounding. Each row is re-quantised symmetrically with scale max|row| / 127,
so nothing clips (ALPT learns that step size instead; LPT does not).

The update owns its rule, since no torch optimiser can step integer storage: row-wise
Adagrad by default (FBGEMM's and DLRM's sparse optimiser for tables: one float of state
per row, counted in training bytes), which needs no tuning against the backbone's Adam
learning rate; `optimizer=sgd` is the paper's plain rule with no state. The learning rate
is a setting of the method (the trainer's is tuned for Adam on the dense layers).

Serving bytes = rows * (d * bits/8 + scale bytes) + one int64 first row per field; training
adds Adagrad's 4 bytes per row. Below its natural size (at d=16 with fp32 scales: 20 of 64
bytes a row) it keeps its precision and takes the widest uniform width that fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import DTYPE_NAMES, EmbeddingConfig, FeatureEmbedding, StepContext, storage_bytes, tensor_bytes
from embslim.embeddings.full import OFFSET_BYTES
from embslim.embeddings.quantized import take_rows
from embslim.embeddings.registry import register_embedding
from embslim.errors import BudgetError, ConfigError

TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
CODE_DTYPES = {8: torch.int8, 16: torch.int16}
ADAGRAD_EPS = 1e-8


@dataclass(frozen=True)
class LPTSettings:
    """bits: code width (Hetu offers 8 and 16); scale: storage of each row's scale; optimizer: the rule applied to
    the dequantised rows (rowwise Adagrad keeps one fp32 per row); lr: its learning rate."""

    bits: Literal[8, 16] = 8
    scale: Literal["fp32", "fp16"] = "fp32"
    optimizer: Literal["adagrad", "sgd"] = "adagrad"
    lr: float = 0.01


def lpt_bytes(fields: list[FieldSpec], dim: int, settings: LPTSettings) -> int:
    """Serving bytes at width dim, before any tensor exists."""
    rows = sum(f.cardinality for f in fields)
    return rows * (storage_bytes(dim, f"int{settings.bits}") + storage_bytes(1, settings.scale)) + OFFSET_BYTES * len(fields)


def stochastic_quantize(rows: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, d] floats -> symmetric integer codes [n, d] and a scale per row, rounded stochastically (unbiased)."""
    qmax = 2 ** (bits - 1) - 1
    scale = (rows.abs().amax(dim=1) / qmax).to(scale_dtype)
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(rows[:, 0]))
    scaled = rows / safe[:, None]
    codes = torch.floor(scaled + torch.rand_like(scaled)).clamp(-qmax, qmax)
    return codes.to(CODE_DTYPES[bits]), scale


@register_embedding("lpt", settings=LPTSettings, budgeted=True)
class LPTEmbedding(FeatureEmbedding):
    """All fields in one integer table (a first row per field) with a scale per row; updated by `on_step_end`."""

    def __init__(self, fields: list[FieldSpec], dim: int, settings: LPTSettings, init_std: float = 0.01) -> None:
        super().__init__()
        if settings.lr <= 0:
            raise ConfigError(f"embedding 'lpt': lr must be positive, got {settings.lr}")
        self.fields, self.width, self.settings = list(fields), dim, settings
        rows = [f.cardinality for f in fields]
        self.register_buffer("firsts", torch.tensor(np.r_[0, np.cumsum(rows)[:-1]], dtype=torch.int64))
        codes, scales = stochastic_quantize(torch.randn(sum(rows), dim) * init_std, settings.bits, TORCH_DTYPES[settings.scale])
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("adagrad", torch.zeros(sum(rows) if settings.optimizer == "adagrad" else 0))
        self._touched: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def from_config(cls, fields: list[FieldSpec], config: EmbeddingConfig, settings: LPTSettings) -> "LPTEmbedding":
        if config.dims is not None:
            raise ConfigError("embedding 'lpt' takes one dim, not per-field dims")
        dim = config.dim if config.budget_bytes is None else cls.widest_dim(fields, config.dim, config.budget_bytes, settings)
        module = cls(fields, dim, settings, config.init_std)
        if config.budget_bytes is not None:
            module.note = (f"int{settings.bits} at its natural size: the precision, not the budget, sets the bytes" if dim == config.dim else
                           f"int{settings.bits} keeps its precision: width {dim} is the widest whose rows fit the budget")
        return module

    @staticmethod
    def widest_dim(fields: list[FieldSpec], dim: int, budget_bytes: int, settings: LPTSettings) -> int:
        for d in range(dim, 0, -1):
            if lpt_bytes(fields, d, settings) <= budget_bytes:
                return d
        raise BudgetError(f"embedding 'lpt': budget of {budget_bytes} bytes is below one int{settings.bits} dimension per field "
                          f"({lpt_bytes(fields, 1, settings)} bytes)")

    @classmethod
    def from_artifact_meta(cls, fields: list[FieldSpec], settings: LPTSettings, meta: dict) -> "LPTEmbedding":
        return cls(fields, meta["dim"], settings)

    def artifact_meta(self) -> dict:
        return {"dim": self.width}

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        """Codes, scales and first rows; the optimiser state is for training only."""
        return {k: getattr(self, k).detach().contiguous() for k in ("firsts", "codes", "scales")}

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict({**tensors, "adagrad": torch.zeros_like(self.adagrad)})

    def index_bytes(self) -> int:
        return sum(tensor_bytes(t) for t in self.artifact_tensors().values())

    def state_bytes(self) -> int:
        return tensor_bytes(self.adagrad)

    def parameter_count(self) -> int:
        return self.codes.numel()

    @property
    def dims(self) -> list[int]:
        return [self.width] * len(self.fields)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Dequantised rows (any index shape)."""
        return take_rows(self.codes, rows).float() * take_rows(self.scales, rows).float().unsqueeze(-1)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows as served; in training, through a float leaf per call whose gradient `on_step_end` applies."""
        if not (self.training and torch.is_grad_enabled()):
            return self.rows(rows)
        unique, inverse = torch.unique(rows, return_inverse=True)
        leaf = self.rows(unique).requires_grad_()
        self._touched.append((unique, leaf))
        return leaf[inverse]

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        return self.gather(ids + self.firsts[field])

    def lookup_fields(self, ids: torch.Tensor, fields: list[int]) -> list[torch.Tensor]:
        vecs = self.gather(ids + self.firsts[fields])
        return list(vecs.unbind(1))  # split once: a slice per field would write a full-size gradient each

    @torch.no_grad()
    def on_step_end(self, ctx: StepContext) -> None:
        """Update the rows the step touched (rowwise Adagrad or SGD in float) and re-quantise them stochastically."""
        touched = [(rows, leaf.grad) for rows, leaf in self._touched if leaf.grad is not None]
        self._touched = []
        if not touched:
            return
        unique, inverse = torch.unique(torch.cat([r for r, _ in touched]), return_inverse=True)
        grad = torch.zeros(len(unique), self.width, device=unique.device).index_add_(0, inverse, torch.cat([g for _, g in touched]))
        if self.settings.optimizer == "adagrad":
            self.adagrad[unique] += grad.pow(2).mean(dim=1)
            grad = grad / (self.adagrad[unique].sqrt() + ADAGRAD_EPS).unsqueeze(1)
        codes, scales = stochastic_quantize(self.rows(unique) - self.settings.lr * grad, self.settings.bits, self.scales.dtype)
        self.codes[unique] = codes
        self.scales[unique] = scales
