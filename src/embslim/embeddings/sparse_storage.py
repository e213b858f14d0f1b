"""Storage of a pruned table in the cheapest honest form, with its exact bytes and lookups from it.

A table whose entries were pruned (magnitude, PEP, dynamic sparse training) is served in
whichever of three forms is smallest, chosen per table by bytes:
- "dense": the kept columns as a dense [rows, k] block, plus the int16 ids of those columns
  (none when all are kept);
- "bitmask": the non-zero values and a packed bit per entry saying which are kept;
- "csr": the non-zero values, a column index per value (uint8 up to 256 columns, else int16)
  and a length per row (uint8 up to 255 columns, else int16).
Both sparse forms also store where each block of `BLOCK_ROWS` rows starts in the values (int32,
int64 past 2^31 values): a lookup finds row r's first value from its block's start plus the
lengths (or bit counts) of the rows before it in the block, so random access costs a gather of
one block, not a scan, and the index costs 4/16 bytes a row instead of a 4-byte pointer per row.
Bytes are those of every tensor stored, so the "97-99 % fewer parameters" of non-zero counting
(PEP's reference) is not what is reported: index storage is paid for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from embslim.embeddings.base import storage_bytes

Form = Literal["dense", "bitmask", "csr"]
FORMS: tuple[Form, ...] = ("dense", "bitmask", "csr")
VALUE_KIND = "fp32"
BLOCK_ROWS = 16
POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def pointer_kind(nnz: int) -> str:
    return "int32" if nnz < 2**31 else "int64"


def column_kind(width: int) -> str:
    return "uint8" if width <= 256 else "int16"


def length_kind(width: int) -> str:
    return "uint8" if width <= 255 else "int16"


def block_count(rows: int) -> int:
    return -(-rows // BLOCK_ROWS)


def form_bytes(form: Form, rows: int, width: int, nnz: int, kept_columns: int) -> int:
    """Exact bytes of a [rows, width] table with `nnz` kept entries in `kept_columns` columns, stored as `form`."""
    if form == "dense":
        ids = storage_bytes(kept_columns, "int16") if kept_columns < width else 0
        return storage_bytes(rows * kept_columns, VALUE_KIND) + ids
    starts = storage_bytes(block_count(rows) + 1, pointer_kind(nnz))
    if form == "bitmask":
        return storage_bytes(nnz, VALUE_KIND) + rows * math.ceil(width / 8) + starts
    return storage_bytes(nnz, VALUE_KIND) + storage_bytes(nnz, column_kind(width)) + storage_bytes(rows, length_kind(width)) + starts


def cheapest_form(rows: int, width: int, nnz: int, kept_columns: int) -> tuple[Form, int]:
    """The smallest form and its bytes (ties go to the simpler form: dense, then bitmask)."""
    return min(((f, form_bytes(f, rows, width, nnz, kept_columns)) for f in FORMS), key=lambda fb: fb[1])


def mask_bytes(mask: torch.Tensor) -> int:
    """Serving bytes of a table whose kept entries are `mask` ([rows, width] bool), in its cheapest form."""
    rows, width = mask.shape
    return cheapest_form(rows, width, kept_count(mask), kept_columns(mask))[1]


def kept_count(mask: torch.Tensor) -> int:
    """Entries a bool mask keeps (`count_nonzero`: ~10x a bool `sum`, which pruning methods pay every step)."""
    return int(torch.count_nonzero(mask))


def kept_columns(mask: torch.Tensor, probe_rows: int = 4096) -> int:
    """Columns of a [rows, width] bool mask with any entry kept. Usually every column keeps something within
    the first `probe_rows` rows, which settles it without reading the rest; otherwise a byte max down the rows."""
    if mask.numel() == 0:
        return 0
    if bool(mask[:probe_rows].any(dim=0).all()):
        return mask.shape[1]
    return int(torch.count_nonzero(mask.view(torch.uint8).amax(dim=0)))


@dataclass
class SparseRows:
    """One table as served: its form, width and the tensors that form stores."""

    form: Form
    rows: int
    width: int
    tensors: dict[str, torch.Tensor]

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor) -> "SparseRows":
        """Store `weight` where `mask` is True in the cheapest form (entries outside the mask are dropped)."""
        weight, mask = weight.detach().float().cpu(), mask.detach().bool().cpu()
        rows, width = weight.shape
        kept = mask.any(dim=0)
        form, _ = cheapest_form(rows, width, int(mask.sum()), int(kept.sum()))
        if form == "dense":
            cols = kept.nonzero().flatten()
            tensors = {"values": (weight * mask)[:, cols].contiguous()}
            if len(cols) < width:
                tensors["columns"] = cols.to(torch.int16)
            return cls(form, rows, width, tensors)
        nnz = int(mask.sum())
        lengths = mask.sum(dim=1)
        starts = torch.zeros(block_count(rows) + 1, dtype=torch.int64)
        starts[1:] = torch.cat([lengths, lengths.new_zeros(block_count(rows) * BLOCK_ROWS - rows)]).reshape(-1, BLOCK_ROWS).sum(1).cumsum(0)
        tensors = {"values": weight[mask].contiguous(), "starts": starts.to(getattr(torch, pointer_kind(nnz)))}
        if form == "bitmask":
            tensors["bits"] = torch.from_numpy(np.packbits(mask.numpy(), axis=1, bitorder="little"))
        else:
            tensors["columns"] = mask.nonzero()[:, 1].to(getattr(torch, column_kind(width)))
            tensors["lengths"] = lengths.to(getattr(torch, length_kind(width)))
        return cls(form, rows, width, tensors)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to_dense(self) -> torch.Tensor:
        return self.lookup(torch.arange(self.rows))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of `ids` (any shape) as [..., width] float vectors, zeros where pruned."""
        flat = ids.reshape(-1).long()
        n = flat.shape[0]  # not len(): keeps the batch size symbolic in a traced program (`embslim export`)
        values = self.tensors["values"].to(flat.device)
        if self.form == "dense":
            out = values[flat]
            if "columns" in self.tensors:
                full = out.new_zeros(n, self.width)
                full[:, self.tensors["columns"].long().to(flat.device)] = out
                out = full
            return out.reshape(*ids.shape, self.width)
        if self.form == "bitmask":
            shifts = torch.arange(8, device=flat.device, dtype=torch.uint8)
            bits = self.tensors["bits"].to(flat.device)[flat]
            kept = ((bits.unsqueeze(-1) >> shifts) & 1).reshape(n, -1)[:, :self.width].bool()
            slots = self.row_starts(flat).unsqueeze(1) + kept.long().cumsum(dim=1) - 1
            picked = values[slots.clamp(0, len(values) - 1)] if len(values) else torch.zeros(slots.shape)
            return torch.where(kept, picked, 0.0).reshape(*ids.shape, self.width)
        first = self.row_starts(flat)
        lengths = self.tensors["lengths"].to(flat.device).long()[flat]
        owner = torch.repeat_interleave(torch.arange(n, device=flat.device), lengths)
        slot = torch.ones_like(owner).cumsum(0) - 1 - torch.repeat_interleave(lengths.cumsum(0) - lengths - first, lengths)
        out = values.new_zeros(n, self.width)
        out[owner, self.tensors["columns"].to(flat.device).long()[slot]] = values[slot]
        return out.reshape(*ids.shape, self.width)

    def row_starts(self, rows: torch.Tensor) -> torch.Tensor:
        """Index of the first stored value of each row: its block's start plus the rows before it in the block."""
        block, within = rows // BLOCK_ROWS, rows % BLOCK_ROWS
        members = block.unsqueeze(1) * BLOCK_ROWS + torch.arange(BLOCK_ROWS, device=rows.device)
        before = (torch.arange(BLOCK_ROWS, device=rows.device) < within.unsqueeze(1)) & (members < self.rows)
        members = members.clamp(max=self.rows - 1)
        if self.form == "bitmask":
            counts = POPCOUNT.to(rows.device)[self.tensors["bits"].to(rows.device)[members].long()].sum(-1)
        else:
            counts = self.tensors["lengths"].to(rows.device).long()[members]
        return self.tensors["starts"].to(rows.device).long()[block] + (counts * before).sum(1)
