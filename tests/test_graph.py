"""LightGCN and pairwise top-k training (BPR, sampled softmax): the graph, its propagation, and every method behind it."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from embslim.cli import main
from embslim.data import load_dataset
from embslim.data.fields import FieldSpec, PreparedData
from embslim.embeddings import EmbeddingConfig, SparseBatch, create_embedding, list_embeddings, method_info
from embslim.embeddings.full import full_bytes
from embslim.errors import ConfigError
from embslim.models import ModelOptions, create_model
from embslim.models.graph import graph_product, normalized_graph
from embslim.train.objective_pairwise import PairwiseObjective
from embslim.train.objectives import create_objective
from embslim.train.recipes import RECIPES, recipe
from embslim.train.run import RunConfig, build_model, run
from embslim.train.topk import candidate_rows
from embslim.train.trainer import TrainConfig, Trainer
from test_ranking import write_ratings

QUICK = TrainConfig(epochs=1, batch_size=128, negatives=2, progress=False)


@pytest.fixture
def tiny(tmp_path):
    return load_dataset("movielens-latest-small", "topk", write_ratings(tmp_path))


def lightgcn(data, layers: int = 3, embedding: EmbeddingConfig = EmbeddingConfig(dim=8, init_std=0.1), train: TrainConfig = QUICK):
    """A LightGCN over `data` with its graph built by the pairwise objective."""
    config = RunConfig("lightgcn", embedding, ModelOptions(graph_layers=layers), train)
    model, d = build_model(data, config)
    return model, d, create_objective(model, d, train)


def pairs(data, split: str) -> set[tuple[int, int]]:
    table = data.split(split)
    return set(zip(table.ids[:, table.single_index(data.user_field)].tolist(), table.ids[:, table.single_index(data.item_field)].tolist()))


def test_graph_holds_exactly_the_training_interactions(tiny):
    model, d, _ = lightgcn(tiny)
    edges = set(zip(*[a.tolist() for a in model.graph.nonzero()]))
    assert edges == pairs(d, "train")
    assert not edges & (pairs(d, "val") | pairs(d, "test"))


def test_edge_weights_are_one_over_the_root_of_both_degrees_and_repeats_count_once():
    graph = torch.from_numpy(normalized_graph(np.array([1, 1, 1, 2, 2]), np.array([1, 2, 2, 2, 3]), 3, 4).toarray())
    deg_u, deg_i = {1: 2, 2: 2}, {1: 1, 2: 2, 3: 1}
    expected = torch.zeros(3, 4)
    for u, i in [(1, 1), (1, 2), (2, 2), (2, 3)]:
        expected[u, i] = 1 / np.sqrt(deg_u[u] * deg_i[i])
    assert torch.allclose(graph, expected)


def test_graph_product_and_its_gradient_match_the_dense_product():
    graph = normalized_graph(np.array([0, 1, 1, 2, 3]), np.array([0, 0, 2, 1, 2]), 4, 3)
    x = torch.randn(3, 5, requires_grad=True)
    graph_product(graph, graph.T.tocsr(), x).pow(2).sum().backward()
    dense = torch.from_numpy(graph.toarray())
    y = x.detach().clone().requires_grad_()
    (dense @ y).pow(2).sum().backward()
    assert torch.allclose(graph_product(graph, graph.T.tocsr(), x), dense @ x, atol=1e-6) and torch.allclose(x.grad, y.grad, atol=1e-6)


def test_zero_layers_score_the_dot_product_of_the_raw_tables(tiny):
    model, d, objective = lightgcn(tiny, layers=0)
    model.eval()
    users = np.array([1, 5, 9])
    raw = model.embedding.field_table(0)[users] @ model.embedding.field_table(1).T
    assert torch.allclose(objective.rank_scores(users, "test"), raw, atol=1e-6)


def test_one_layer_averages_the_table_with_its_normalised_neighbours(tiny):
    model, d, objective = lightgcn(tiny, layers=1)
    model.eval()
    users0, items0 = model.embedding.field_table(0), model.embedding.field_table(1)
    graph = torch.from_numpy(model.graph.toarray())
    user_final, item_final = (users0 + graph @ items0) / 2, (items0 + graph.T @ users0) / 2
    users = np.arange(1, 6)
    assert torch.allclose(objective.rank_scores(users, "val"), user_final[users] @ item_final.T, atol=1e-5)


def test_rank_scores_equal_scoring_every_pair(tiny):
    model, d, objective = lightgcn(tiny)
    Trainer(model, d, QUICK).train_epoch(0)
    model.eval()
    held = d.split("test").take(np.arange(5))
    users = held.ids[:, held.single_index(d.user_field)]
    rows = candidate_rows(held, d.items)
    per_pair = model(SparseBatch.from_table(rows, np.arange(len(rows)))).reshape(len(users), -1)
    assert torch.allclose(objective.rank_scores(users, "test"), per_pair, atol=1e-5)


@pytest.mark.parametrize("model_name,pair_loss", [("mf", "bpr"), ("mf", "softmax"), ("lightgcn", "bpr"), ("lightgcn", "softmax")])
def test_pairwise_loss_decreases_on_a_tiny_problem(tiny, model_name, pair_loss):
    train = replace(QUICK, epochs=10, lr=0.05, negatives=4 if pair_loss == "bpr" else 32, pair_loss=pair_loss, patience=10)
    model, d = build_model(tiny, RunConfig(model_name, EmbeddingConfig(dim=8, init_std=0.1), train=train))
    history = Trainer(model, d, train).fit()["history"]
    assert history[-1]["train_loss"] < 0.85 * history[0]["train_loss"]


def test_bpr_negatives_are_never_the_users_training_items(tiny):
    _, d, objective = lightgcn(tiny, train=replace(QUICK, negatives=5))
    known = pairs(d, "train")
    for batch in objective.batches(0):
        for u, negs in zip(batch.users.tolist(), batch.negatives.tolist()):
            assert all((u, i) not in known and i > 0 for i in negs)


def test_batches_cover_every_training_interaction_once_per_epoch(tiny):
    _, d, objective = lightgcn(tiny)
    seen = [(u, i) for b in objective.batches(3) for u, i in zip(b.users.tolist(), b.positives.tolist())]
    assert sorted(seen) == sorted(zip(*[d.split("train").ids[:, c].tolist() for c in (0, 1)]))
    assert len(list(objective.batches(3))) == objective.steps_per_epoch()


def test_same_seed_same_run_and_another_seed_another(tiny):
    config = RunConfig("lightgcn", EmbeddingConfig(dim=8, init_std=0.1), train=replace(QUICK, epochs=2))
    first, again = run(tiny, config), run(tiny, config)
    other = run(tiny, replace(config, train=replace(config.train, seed=1)))
    assert first["metrics"] == again["metrics"] and first["history"] == again["history"]
    assert first["history"] != other["history"]


def test_mixed_widths_are_projected_to_one_width(tiny):
    model, d, objective = lightgcn(tiny, embedding=EmbeddingConfig(dim=8, dims={"user_id": 4}, init_std=0.1))
    assert model.embedding.dims == [4, 8]
    Trainer(model, d, QUICK).train_epoch(0)
    model.eval()
    assert objective.rank_scores(np.array([1, 2]), "test").shape == (2, len(d.items.label))


def example_config(method: str, fields: list[FieldSpec]) -> EmbeddingConfig:
    """A config every registered method builds from: half the full tables' bytes, or the method's own options."""
    if method == "dnis":
        return EmbeddingConfig("dnis", dim=8, init_std=0.1, options={"blocks": 2})
    if method == "blockwise":
        layout = {"width": 8, "fields": {f.name: {"blocks": [{"rows": [0, 10], "dims": list(range(8))},
                                                             {"rows": [10, f.cardinality], "dims": [0, 1, 2]}]} for f in fields}}
        return EmbeddingConfig("blockwise", dim=8, init_std=0.1, options={"layout": layout})
    assert method_info(method).budgeted, f"{method} is not built from a budget: add its config here"
    options = {"threshold": 10} if method == "qr" else {}  # qr keeps tables of <= 200 rows whole by default
    return EmbeddingConfig(method, dim=8, init_std=0.1, budget_bytes=full_bytes(fields, [8] * len(fields)) // 2, options=options)


@pytest.mark.parametrize("method", list_embeddings())
def test_every_method_trains_one_epoch_under_lightgcn(tiny, method):
    fields = tiny.table.fields
    config = example_config(method, fields)
    r = run(tiny, RunConfig("lightgcn", config, train=QUICK))
    assert all(np.isfinite(v) for v in r["metrics"]["test"].values())
    if config.budget_bytes is not None:
        assert r["embedding"]["bytes"] <= config.budget_bytes


def test_pair_loss_on_a_model_without_inner_product_scores_is_a_config_error(tiny):
    model, d = build_model(tiny, RunConfig("neumf", EmbeddingConfig(dim=4)))
    with pytest.raises(ConfigError, match="cannot be trained pairwise"):
        PairwiseObjective(model, d, replace(QUICK, pair_loss="bpr"))


def test_unknown_pair_loss_is_a_config_error(tiny):
    model, d = build_model(tiny, RunConfig("mf", EmbeddingConfig(dim=4)))
    with pytest.raises(ConfigError, match="pair loss"):
        create_objective(model, d, replace(QUICK, pair_loss="hinge"))


def test_mf_default_objective_stays_pointwise(tiny):
    model, d = build_model(tiny, RunConfig("mf", EmbeddingConfig(dim=4)))
    assert not isinstance(create_objective(model, d, QUICK), PairwiseObjective)
    assert isinstance(create_objective(model, d, replace(QUICK, pair_loss="bpr")), PairwiseObjective)


def test_lightgcn_without_a_graph_says_how_to_train_it():
    fields = [FieldSpec("u", 5, np.ones(5, dtype=np.int64), side="user"), FieldSpec("i", 6, np.ones(6, dtype=np.int64), side="item")]
    model = create_model("lightgcn", create_embedding(fields, EmbeddingConfig(dim=4)), task="topk", user_field="u", item_field="i")
    with pytest.raises(ConfigError, match="no interaction graph"):
        model.retrieval(torch.tensor([1]))


def test_cli_trains_mf_with_bpr_and_lightgcn_with_its_layers(tmp_path, capsys):
    data = write_ratings(tmp_path)
    common = ["train", "--dataset", "movielens-latest-small", "--data-path", str(data), "--task", "topk", "--dim", "4",
              "--epochs", "1", "--quiet"]
    assert main([*common, "--model", "mf", "--pair-loss", "bpr", "--out", str(tmp_path / "mf")]) == 0
    assert main([*common, "--model", "lightgcn", "--graph-layers", "2", "--out", str(tmp_path / "gcn")]) == 0
    mf = json.loads((tmp_path / "mf" / "results.json").read_text())
    gcn = json.loads((tmp_path / "gcn" / "results.json").read_text())
    assert mf["config"]["train"]["pair_loss"] == "bpr" and gcn["config"]["model_options"]["graph_layers"] == 2
    assert mf["config"]["train"]["lr"] == RECIPES[("mf", "topk", "bpr")]["lr"] != recipe("mf", "topk")["lr"]
    assert main([*common, "--model", "deepfm", "--pair-loss", "bpr", "--out", str(tmp_path / "x")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def uneven_histories(folder) -> PreparedData:
    """Top-k data where even users rated 24 movies and odd users 4."""
    rng = np.random.default_rng(0)
    lines = ["userId,movieId,rating,timestamp"]
    for u in range(1, 21):
        lines += [f"{u},{i},4.0,{1000 * u + t}" for t, i in enumerate(rng.choice(np.arange(1, 101), 24 if u % 2 == 0 else 4, replace=False))]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    return load_dataset("movielens-latest-small", "topk", folder)


@pytest.mark.parametrize("sampling,heavy_over_light", [("interactions", (8, 14)), ("users", (0.7, 1.4))])
def test_user_sampling_draws_every_user_alike_and_interaction_sampling_by_history(tmp_path, sampling, heavy_over_light):
    data = uneven_histories(tmp_path)
    _, d, objective = lightgcn(data, train=replace(QUICK, pair_sampling=sampling))
    drawn = [(u, i) for epoch in range(30) for b in objective.batches(epoch) for u, i in zip(b.users.tolist(), b.positives.tolist())]
    assert set(drawn) <= pairs(d, "train") and len(drawn) == 30 * len(objective.users)
    counts = np.bincount([u for u, _ in drawn])
    heavy, light = (counts[objective.active_users[objective.user_counts == n]].mean() for n in (22, 2))
    assert heavy_over_light[0] < heavy / light < heavy_over_light[1]

def test_unknown_pair_sampling_is_a_config_error(tiny):
    model, d = build_model(tiny, RunConfig("mf", EmbeddingConfig(dim=4)))
    with pytest.raises(ConfigError, match="pair sampling"):
        create_objective(model, d, replace(QUICK, pair_loss="bpr", pair_sampling="items"))


def test_a_pair_loss_row_applies_over_the_model_row_only_with_that_loss():
    own = RECIPES[("mf", "topk", "bpr")]
    assert recipe("mf", "topk", pair_loss="bpr") == {**recipe("mf", "topk"), **own}
    assert recipe("mf", "topk", pair_loss="softmax") == recipe("mf", "topk") != recipe("mf", "topk", pair_loss="bpr")
