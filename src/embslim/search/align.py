"""Align embedding dimensions with their principal axes before a dimension search.

A trained table spreads its information over all d coordinates in arbitrary
directions, so dropping coordinates per block loses more than it has to. For
backbones that only use the vectors through inner products between fields and
linear layers (MF, FM, DeepFM), one orthogonal rotation R applied to every field
(v -> v @ R), with the linear layers rotated to match, leaves the model's outputs
unchanged. Choosing R as the eigenvectors of the frequency-weighted second moment
of all rows, largest first, puts the most energy in the first coordinates, where
a per-block selection of dimensions then loses the least.
"""
from __future__ import annotations

import numpy as np
import torch

from embslim.models.base import Recommender


@torch.no_grad()
def principal_rotation(table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Orthogonal [d, d]: eigenvectors of sum_v w_v e_v e_v^T, by decreasing eigenvalue."""
    t = table.double()
    moment = (t * weights.double().unsqueeze(1)).T @ t
    values, vectors = torch.linalg.eigh(moment)
    return vectors[:, torch.argsort(values, descending=True)].to(table.dtype)


@torch.no_grad()
def align_to_principal_axes(model: Recommender) -> bool:
    """Rotate the single uniform-width table of `model` and compensate in its network.

    Returns False, changing nothing, when the embedding has several widths or the
    backbone is not invariant to the rotation.
    """
    tables = model.embedding.sparse_parameters()
    if len(tables) != 1 or len(set(model.embedding.dims)) != 1:
        return False
    table = tables[0]
    counts = np.concatenate([f.counts for f in model.embedding.fields]).astype(np.float32)
    rotation = principal_rotation(table, torch.from_numpy(counts) + 1e-3)
    try:
        model.absorb_rotation(rotation)
    except NotImplementedError:
        return False
    table.copy_(table @ rotation)
    return True
