"""Align embedding dimensions with their principal axes before a dimension search.

A trained table spreads its information over all d coordinates in arbitrary
directions, so dropping coordinates per block loses more than it has to. For
backbones that only use the vectors through inner products between fields and
linear layers (MF, FM, DeepFM), one orthogonal rotation R applied to every field
(v -> v @ R), with the linear layers rotated to match, leaves the model's outputs
unchanged. Choosing R as the eigenvectors of the frequency-weighted second moment
of all rows, largest first, puts the most energy in the first coordinates, where
a per-block selection of dimensions then loses the least.

A backbone that reads each field's vector only along one direction u_f (LR: the
score is sum_f w_f . v_f) takes a rotation per field instead, whose first axis is
u_f: everything the model sees of a value then sits in its first coordinate, so
one kept dimension per value serves the trained model exactly. (On MovieLens-100K
CTR this alone did not change LR's DNIS results, 0.7693-0.7694 AUC before and after:
the search's alpha, not the layout, costs LR there; see the README's DNIS matrix.)
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
def reader_rotation(table: torch.Tensor, weights: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Orthogonal [d, d] whose first column is `direction` (normalised) and whose others are the principal
    axes (`principal_rotation`) of the rows' components orthogonal to it."""
    d = table.shape[1]
    u = direction.double() / direction.double().norm().clamp(min=1e-30)
    basis, _ = torch.linalg.qr(torch.cat([u[:, None], torch.eye(d, dtype=torch.float64)], dim=1))
    complement = basis[:, 1:d]  # orthonormal, orthogonal to u (the first column of basis is +-u)
    inner = principal_rotation((table.double() @ complement), weights)
    return torch.cat([u[:, None], complement @ inner.double()], dim=1).to(table.dtype)


@torch.no_grad()
def align_to_principal_axes(model: Recommender) -> bool:
    """Rotate the single uniform-width table of `model` and compensate in its network: one rotation for
    every field, or one per field along the direction the backbone reads it (`field_reader_directions`).

    Returns False, changing nothing, when the embedding has several widths or the
    backbone is not invariant to the rotation.
    """
    tables = model.embedding.sparse_parameters()
    if len(tables) != 1 or len(set(model.embedding.dims)) != 1:
        return False
    table = tables[0]
    counts = np.concatenate([f.counts for f in model.embedding.fields]).astype(np.float32)
    weights = torch.from_numpy(counts) + 1e-3
    directions = model.field_reader_directions()
    if directions is not None and table.shape[0] == len(weights):
        bounds = np.cumsum([0] + [f.cardinality for f in model.embedding.fields])
        spans = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        rotations = [reader_rotation(table[s], weights[s], u) for s, u in zip(spans, directions)]
        model.absorb_field_rotations(rotations)
        for s, rotation in zip(spans, rotations):
            table[s] = table[s] @ rotation
        return True
    rotation = principal_rotation(table, weights)
    try:
        model.absorb_rotation(rotation)
    except NotImplementedError:
        return False
    table.copy_(table @ rotation)
    return True
