"""Top-k evaluation: full ranking by matrix products, the sampled protocol, and their metrics."""
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from embslim.data import load_dataset
from embslim.embeddings import EmbeddingConfig
from embslim.errors import ConfigError
from embslim.train.objectives import PointwiseObjective, seen_matrix
from embslim.train.ranking import evaluate_ranking, full_ranks, ranking_metrics, sampled_negatives, sampled_ranks
from embslim.train.run import RunConfig, build_model, run
from embslim.train.trainer import TrainConfig, Trainer


def write_ratings(folder: Path, users: int = 40, items: int = 150, per_user: int = 12, seed: int = 0) -> Path:
    """A MovieLens latest-small ratings.csv with `per_user` timestamped ratings per user."""
    rng = np.random.default_rng(seed)
    lines = ["userId,movieId,rating,timestamp"]
    for u in range(1, users + 1):
        for t, i in enumerate(rng.choice(np.arange(1, items + 1), per_user, replace=False)):
            lines.append(f"{u},{i},{rng.integers(1, 6)}.0,{1000 * u + t}")
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_full_rank_counts_higher_scores_ignoring_known_items_and_item_zero():
    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0, 8.0]])
    known = sp.csr_matrix(np.array([[0, 1, 0, 0, 0]]))
    assert full_ranks(scores, np.array([2]), known).tolist() == [1]


def test_full_ranks_equal_masking_every_known_item_by_hand():
    rng = np.random.default_rng(3)
    scores = torch.as_tensor(rng.integers(0, 20, size=(30, 40)).astype(np.float32))  # many ties
    known = sp.random(30, 40, density=0.3, random_state=4, format="csr")
    targets = rng.integers(1, 40, size=30)
    masked = scores.clone()
    masked[torch.as_tensor(known.toarray() > 0)] = -torch.inf
    masked[:, 0] = -torch.inf
    expected = [(masked[u] > scores[u, t]).sum().item() - (masked[u, t] > scores[u, t]).item() for u, t in enumerate(targets)]
    assert full_ranks(scores, targets, known).tolist() == expected


def test_a_known_target_is_still_ranked():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    known = sp.csr_matrix(np.array([[0, 0, 1, 0]]))
    assert full_ranks(scores, np.array([2]), known).tolist() == [1]


def test_ranking_metrics_of_known_ranks():
    m = ranking_metrics(np.array([0, 1, 15, 30]))
    assert m["hr@10"] == 0.5 and m["recall@20"] == 0.75 and m["hr@50"] == 1.0
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["ndcg@50"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(17) + 1 / np.log2(32)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 16 + 1 / 31) / 4)


def test_sampled_negatives_are_distinct_unseen_items_and_never_the_target():
    known = sp.csr_matrix((np.ones(3), ([0, 0, 1], [1, 2, 3])), shape=(2, 120))
    neg = sampled_negatives(np.array([5, 6]), known, 120, np.random.default_rng(0))
    assert neg.shape == (2, 100)
    assert all(len(set(row)) == 100 for row in neg.tolist())
    assert not ({0, 1, 2, 5} & set(neg[0].tolist())) and not ({0, 3, 6} & set(neg[1].tolist()))


def test_sampled_negatives_cover_the_unseen_items_uniformly():
    users = 2000
    known = sp.csr_matrix((np.ones(users * 10), (np.repeat(np.arange(users), 10), np.tile(np.arange(1, 11), users))), shape=(users, 300))
    neg = sampled_negatives(np.full(users, 11), known, 300, np.random.default_rng(0))
    counts = np.bincount(neg.ravel(), minlength=300)
    assert counts[:12].sum() == 0
    expected = users * 100 / 288
    assert counts[12:].min() > 0.75 * expected and counts[12:].max() < 1.25 * expected


def test_a_user_who_knows_nearly_every_item_still_gets_distinct_unseen_negatives():
    known = sp.csr_matrix((np.ones(895), (np.zeros(895, dtype=int), np.arange(1, 896))), shape=(1, 1000))
    neg = sampled_negatives(np.array([999]), known, 1000, np.random.default_rng(0))
    assert len(set(neg[0].tolist())) == 100 and set(neg[0].tolist()) <= set(range(896, 999))


def test_every_chunking_meets_the_same_sampled_negatives():
    rng = np.random.default_rng(0)
    users, n_items = 300, 400
    rows = [(u, i) for u in range(users) for i in rng.choice(np.arange(1, n_items), 280 if u % 20 == 0 else 10, replace=False)]
    known = sp.csr_matrix((np.ones(len(rows)), tuple(np.array(rows).T)), shape=(users, n_items))
    targets = np.array([next(i for i in range(1, n_items) if known[u, i] == 0) for u in range(users)])
    scores = torch.as_tensor(rng.normal(size=(users, n_items)), dtype=torch.float32)
    runs = [evaluate_ranking(lambda u: scores[u], np.arange(users), targets, known, n_items, "sampled100", chunk=c, seed=1)
            for c in (7, 64, 300)]
    assert runs[0] == runs[1] == runs[2]


def test_sampled_negatives_need_enough_unseen_items():
    known = sp.csr_matrix((2, 50))
    with pytest.raises(ConfigError, match="100 unseen items"):
        sampled_negatives(np.array([1, 2]), known, 50, np.random.default_rng(0))


def test_sampled_rank_counts_only_the_sampled_negatives():
    scores = torch.arange(10.0).unsqueeze(0)
    assert sampled_ranks(scores, np.array([5]), np.array([[1, 7, 9, 2]])).tolist() == [2]


def test_protocols_name_their_metrics_apart():
    scores = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    args = (lambda u: scores[u], np.arange(4), np.array([1, 2, 3, 4]), sp.csr_matrix((4, 300)), 300)
    full, sampled, both = (evaluate_ranking(*args, protocol=p) for p in ("full", "sampled100", "both"))
    assert "ndcg@10" in full and not any(k.startswith("s100_") for k in full)
    assert "s100_ndcg@10" in sampled and "ndcg@10" not in sampled
    assert both == {**full, **sampled}


def test_sampled_figures_are_at_least_the_full_ranking_ones():
    scores = torch.randn(50, 400, generator=torch.Generator().manual_seed(1))
    m = evaluate_ranking(lambda u: scores[u], np.arange(50), np.arange(1, 51), sp.csr_matrix((50, 400)), 400, protocol="both")
    assert m["s100_hr@10"] >= m["hr@10"] and m["s100_mrr"] >= m["mrr"]


def test_unknown_protocol_is_a_config_error():
    with pytest.raises(ConfigError, match="eval protocol"):
        evaluate_ranking(lambda u: torch.zeros(len(u), 5), np.arange(1), np.array([1]), sp.csr_matrix((1, 5)), 5, protocol="sampled")


def test_mf_retrieval_ranks_items_as_scoring_every_pair_does(tmp_path):
    data = load_dataset("movielens-latest-small", "topk", write_ratings(tmp_path))
    model, d = build_model(data, RunConfig("mf", EmbeddingConfig(dim=8, init_std=0.1), train=TrainConfig(epochs=1, progress=False)))
    Trainer(model, d, TrainConfig(epochs=1, progress=False)).train_epoch(0)
    model.eval()
    objective = PointwiseObjective(model, d, TrainConfig())
    users = d.split("test").ids[:, d.table.single_index(d.user_field)]
    fast = objective.rank_scores(users, "test")
    model.retrieval = None
    slow = objective.rank_scores(users, "test")
    targets = d.split("test").ids[:, d.table.single_index(d.item_field)]
    known = seen_matrix(d, ("train", "val"))[users]
    assert np.array_equal(full_ranks(fast, targets, known), full_ranks(slow, targets, known))


def test_topk_run_reports_both_protocols_when_asked(tmp_path):
    data = load_dataset("movielens-latest-small", "topk", write_ratings(tmp_path))
    r = run(data, RunConfig("mf", EmbeddingConfig(dim=4), train=TrainConfig(epochs=1, progress=False, eval_protocol="both")))
    assert {"hr@10", "ndcg@50", "s100_hr@10", "s100_ndcg@10"} <= set(r["metrics"]["test"])
    assert r["config"]["train"]["eval_protocol"] == "both"
