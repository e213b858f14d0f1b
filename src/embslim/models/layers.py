"""Building blocks shared by the backbones."""
from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: tuple[int, ...], dropout: float, out_dim: int | None = 1) -> nn.Sequential:
    """Linear-ReLU-Dropout stack, ending in a Linear to `out_dim` unless it is None."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = h
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class FieldAligner(nn.Module):
    """Bring per-field vectors of mixed widths to one width for pairwise interactions.

    Fields already at `width` pass through; others get a bias-free linear projection
    (a zero-width field becomes a zero vector). The projections are part of the
    embedding's serving cost, so models count `memory_bytes()` of this module too.
    """

    def __init__(self, dims: list[int], width: int | None = None) -> None:
        super().__init__()
        self.width = width or max(dims)
        self.proj = nn.ModuleDict({str(i): nn.Linear(d, self.width, bias=False) for i, d in enumerate(dims) if 0 < d != self.width})
        self.dims = list(dims)

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """[B, F, width]"""
        return torch.stack([self.field(i, v) for i, v in enumerate(vectors)], dim=1)

    def field(self, i: int, v: torch.Tensor) -> torch.Tensor:
        """Field `i`'s vectors [..., dims[i]] at the common width [..., width]."""
        if str(i) in self.proj:
            return self.proj[str(i)](v)
        if self.dims[i] == 0:
            return v.new_zeros(v.shape[:-1] + (self.width,))
        return v

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


def fm_interaction(stacked: torch.Tensor) -> torch.Tensor:
    """Sum of pairwise inner products over fields of a [B, F, d] tensor -> [B]."""
    square_of_sum = stacked.sum(dim=1).pow(2)
    sum_of_square = stacked.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
