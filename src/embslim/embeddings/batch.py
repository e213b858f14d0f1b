"""The sparse input every embedding method takes: ids per single-valued field, bags per multi-valued one."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from embslim.data.fields import FeatureTable


@dataclass
class SparseBatch:
    """A batch in the shape TorchRec users know.

    ids: [B, F] int64, one column per single-valued field (in field order).
    bags: name -> (values, offsets) for each multi-valued field; offsets has B+1 entries.
    label: [B] float32.
    sequences: name -> [B, L] ids padded with -1, read through another field's table (a behaviour history).
    """

    ids: torch.Tensor
    bags: dict[str, tuple[torch.Tensor, torch.Tensor]]
    label: torch.Tensor
    sequences: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.ids.shape[0]

    @classmethod
    def from_table(cls, table: FeatureTable, rows: np.ndarray | None = None) -> "SparseBatch":
        """Gather `rows` (all when None) of an encoded table into tensors."""
        take = (lambda a: a) if rows is None else (lambda a: a[rows])
        bags = {name: padded_to_bag(torch.from_numpy(take(m))) for name, m in table.bags.items()}
        sequences = {name: torch.from_numpy(take(m)) for name, m in table.sequences.items()}
        return cls(torch.from_numpy(take(table.ids)), bags, torch.from_numpy(take(table.label)), sequences)

    def to(self, device: torch.device | str) -> "SparseBatch":
        bags = {k: (v.to(device), o.to(device)) for k, (v, o) in self.bags.items()}
        return SparseBatch(self.ids.to(device), bags, self.label.to(device), {k: v.to(device) for k, v in self.sequences.items()})


def padded_to_bag(padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids padded with -1 -> (values, offsets[B+1])."""
    mask = padded >= 0
    lengths = mask.sum(dim=1)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(lengths, dim=0, out=offsets[1:])
    return padded[mask], offsets
