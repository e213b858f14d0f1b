"""DNIS on every family of top-k backbones: it learns and scores on each objective's own validation examples."""
import json

import numpy as np
import pytest

from embslim.cli import main
from embslim.data import load_dataset
from embslim.embeddings import EmbeddingConfig
from embslim.search.dnis import AlphaStep, DNISConfig
from embslim.search.importance import loss_increase
from embslim.train.objectives import create_objective
from embslim.train.run import RunConfig, build_model
from embslim.train.trainer import TrainConfig, Trainer
from test_ranking import write_ratings
from test_sequential import write_sequences

QUICK = TrainConfig(epochs=1, batch_size=64, progress=False)


def dnis_model(data, model: str, train: TrainConfig = QUICK):
    return build_model(data, RunConfig(model, EmbeddingConfig("dnis", 8, init_std=0.1, options={"blocks": 2}), train=train))


def topk_data(tmp_path, model: str):
    """Tiny top-k data in the format `model` reads: SASRec-format sequences, or MovieLens ratings for user-item models."""
    if model == "sasrec":
        return load_dataset("amazon-video-games", "topk", write_sequences(tmp_path))
    return load_dataset("movielens-latest-small", "topk", write_ratings(tmp_path))


def test_sequence_validation_queries_read_the_training_history_and_target_the_validation_item(tmp_path):
    data = load_dataset("amazon-video-games", "topk", write_sequences(tmp_path))
    model, d = dnis_model(data, "sasrec")
    queries = create_objective(model, d, QUICK).validation_queries()
    val, train = d.splits["val"], d.splits["train"]
    users = d.row_users()[val]
    assert queries.targets.tolist() == d.row_items()[val].tolist() and len(users) == len(queries)
    for user, inputs in zip(users.tolist(), queries.inputs.tolist()):
        history = d.row_items()[train][d.row_users()[train] == user]
        history = history[np.argsort(d.order[train][d.row_users()[train] == user])]
        assert [i for i in inputs if i >= 0] == history[-len(inputs):].tolist()


def test_pointwise_topk_validation_has_sampled_negatives(tmp_path):
    data = load_dataset("movielens-latest-small", "topk", write_ratings(tmp_path))
    model, d = dnis_model(data, "mf")
    objective = create_objective(model, d, QUICK)
    labels = objective.validation_table().label
    assert objective.validation_size() == (1 + QUICK.negatives) * len(d.splits["val"])
    assert set(np.unique(labels).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("name", ["sasrec", "lightgcn", "mf"])
def test_alpha_step_moves_alpha_on_each_objective(tmp_path, name):
    model, d = dnis_model(topk_data(tmp_path, name), name)
    step = AlphaStep(model, d, DNISConfig(alpha_lr=0.5), batch_size=32, seed=0, train=QUICK)
    Trainer(model, d, QUICK, callbacks=[step]).train_epoch(0)
    alpha = model.embedding.alpha
    assert (alpha < 1).any() and alpha.min() >= 0


@pytest.mark.parametrize("name", ["sasrec", "lightgcn"])
def test_loss_increase_scores_every_block_and_dimension_of_a_many_rows_per_example_model(tmp_path, name):
    model, d = dnis_model(topk_data(tmp_path, name), name)
    Trainer(model, d, QUICK).train_epoch(0)
    scores = loss_increase(model, d)
    assert set(scores) == {f.name for f in model.embedding.fields}
    for f, n in zip(model.embedding.fields, model.embedding.field_blocks):
        assert scores[f.name].shape == (n, 8) and np.isfinite(scores[f.name]).all() and (scores[f.name] >= 0).all()


def test_search_command_runs_dnis_on_sasrec_within_its_budget(tmp_path):
    seqs = write_sequences(tmp_path, users=40)
    out = tmp_path / "search"
    args = ["search", "--dataset", "amazon-video-games", "--data-path", str(seqs), "--task", "topk", "--model", "sasrec",
            "--dim", "8", "--budget", "0.3", "--epochs", "1", "--search-epochs", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["runs"]["dnis"]["embedding"]["bytes"] <= report["budget_bytes"]
    assert np.isfinite(report["runs"]["dnis"]["metrics"]["test"]["ndcg@10"])
