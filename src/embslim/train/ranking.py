"""Top-k evaluation: exact full ranking as chunked matrix products, and the sampled protocol.

Each held-out user has one target item. Full ranking compares it with every item of
the catalogue except those the user already has (the OOV row 0 included); the sampled
protocol of the SASRec paper compares it with `negatives` items drawn uniformly from
those the user has not interacted with. The 0-based rank is the number of candidates
scoring strictly higher. The two protocols give different figures, so their metrics
carry different names (`hr@10` against `s100_hr@10`) and a report never mixes them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from embslim.errors import ConfigError

KS = (10, 20, 50)
PROTOCOLS = ("full", "sampled100", "both")
REJECTION_ROUNDS = 4
SAMPLED_NEGATIVES = 100
SAMPLED_PREFIX = "s100_"

ScoreFn = Callable[[np.ndarray], torch.Tensor]


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"eval protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    return protocol


def primary_metric(protocol: str) -> str:
    """The metric early stopping and the benchmark follow: NDCG@10 of the protocol the run reports."""
    return SAMPLED_PREFIX + "ndcg@10" if protocol == "sampled100" else "ndcg@10"


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """HR, NDCG and Recall at each K and MRR from the 0-based rank of each user's one held-out item.

    With one relevant item per user, Recall@K equals HR@K; both are reported under their usual names.
    """
    ranks = ranks.astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(np.mean(hit))
        out[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 2), 0.0)))
        out[f"recall@{k}"] = out[f"hr@{k}"]
    out["mrr"] = float(np.mean(1.0 / (ranks + 1)))
    return out


def full_ranks(scores: torch.Tensor, targets: np.ndarray, excluded: sp.csr_matrix) -> np.ndarray:
    """0-based rank of each row's target among all items, excluded items and item 0 removed.

    scores: [U, n_items]; excluded: [U, n_items] sparse (the user's known items). Counts the items scoring
    above the target, then subtracts the excluded ones among them (a sparse correction, no masked copy).
    """
    rows = torch.arange(len(targets))
    tgt = torch.as_tensor(targets, dtype=torch.long)
    target_scores = scores[rows, tgt].unsqueeze(1)
    higher = (scores > target_scores).sum(dim=1, dtype=torch.int32).long()  # an int32 count is twice as fast
    coo = excluded.tocoo()
    r, c = torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)
    known = (c != 0) & (c != tgt[r])
    r, c = r[known], c[known]
    higher -= torch.zeros_like(higher).index_add_(0, r, (scores[r, c] > target_scores[r, 0]).long())
    higher -= (scores[:, 0] > target_scores[:, 0]).long()
    return higher.numpy()


def sampled_negatives(targets: np.ndarray, excluded: sp.csr_matrix, n_items: int, rng: np.random.Generator,
                      negatives: int = SAMPLED_NEGATIVES) -> np.ndarray:
    """[U, negatives] items drawn uniformly without replacement from items 1.. the user has not interacted with.

    Vectorised rejection sampling: each row draws a few times `negatives` items at once and keeps its first
    `negatives` distinct unseen ones; the rare row left short (a user who knows most of a small catalogue)
    draws again, twice as many, and after a few rounds picks from its unseen items directly.
    """
    rows_of = np.repeat(np.arange(len(targets)), np.diff(excluded.indptr))
    known = np.unique(np.concatenate([rows_of * n_items + excluded.indices, np.arange(len(targets)) * n_items + targets,
                                      np.arange(len(targets)) * n_items]))
    unseen = n_items - np.bincount(known // n_items, minlength=len(targets))
    if len(targets) and unseen.min() < negatives:
        raise ConfigError(f"sampled evaluation needs {negatives} unseen items per user; a user has only {int(unseen.min())}")
    out = np.empty((len(targets), negatives), dtype=np.int64)
    pending, draws = np.arange(len(targets)), 2 * negatives
    for _ in range(REJECTION_ROUNDS):
        if len(pending) == 0:
            return out
        items = rng.integers(1, n_items, size=(len(pending), draws))
        keys = pending[:, None] * n_items + items
        fresh = known[np.minimum(np.searchsorted(known, keys), len(known) - 1)] != keys
        first = np.zeros(keys.size, dtype=bool)
        first[np.unique(keys, return_index=True)[1]] = True
        keep = fresh & first.reshape(keys.shape)
        enough = keep.sum(axis=1) >= negatives
        order = np.argsort(~keep[enough], axis=1, kind="stable")[:, :negatives]
        out[pending[enough]] = np.take_along_axis(items[enough], order, axis=1)
        pending, draws = pending[~enough], 2 * draws
    for u in pending:
        mask = np.ones(n_items, dtype=bool)
        mask[known[(known >= u * n_items) & (known < (u + 1) * n_items)] - u * n_items] = False
        out[u] = rng.choice(np.flatnonzero(mask), size=negatives, replace=False)
    return out


def sampled_ranks(scores: torch.Tensor, targets: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target among its sampled negatives."""
    tgt = scores[torch.arange(len(targets)), torch.as_tensor(targets, dtype=torch.long)].to(torch.float64)
    neg = torch.gather(scores, 1, torch.as_tensor(negatives, dtype=torch.long)).to(torch.float64)
    return (neg > tgt.unsqueeze(1)).sum(dim=1).numpy()


def evaluate_ranking(score: ScoreFn, users: np.ndarray, targets: np.ndarray, excluded: sp.csr_matrix, n_items: int,
                     protocol: str = "full", chunk: int = 1024, seed: int = 0) -> dict[str, float]:
    """Metrics of the protocol(s) for held-out (user, target) pairs.

    `score(users_chunk)` returns [len(chunk), n_items] scores; `excluded[user]` are the user's known items.
    The sampled negatives are drawn with a generator seeded by `seed`, so every model evaluated on the same split
    meets the same negatives.
    """
    check_protocol(protocol)
    sampled_protocol = protocol in ("sampled100", "both")
    # Drawn once for every user, not per chunk: backbones rank in chunks of different sizes and must meet the same negatives.
    negatives = sampled_negatives(targets, excluded[users], n_items, np.random.default_rng([seed, 100])) if sampled_protocol else None
    full, sampled = [], []
    for s in range(0, len(users), chunk):
        u, t = users[s:s + chunk], targets[s:s + chunk]
        scores = score(u).detach().cpu()
        known = excluded[u]
        if protocol in ("full", "both"):
            full.append(full_ranks(scores, t, known))
        if sampled_protocol:
            sampled.append(sampled_ranks(scores, t, negatives[s:s + chunk]))
    out: dict[str, float] = {}
    if full:
        out.update(ranking_metrics(np.concatenate(full)))
    if sampled:
        out.update({SAMPLED_PREFIX + k: v for k, v in ranking_metrics(np.concatenate(sampled)).items()})
    return out
