"""The trainer: early stopping, determinism, resume after a kill, results in the documented shape."""
import json

import pytest
import torch

from embslim.cli import main
from embslim.embeddings import EmbeddingConfig
from embslim.train.run import RunConfig, build_model, run, train_model
from embslim.train.trainer import TrainConfig, Trainer
from conftest import Interrupt, load_tiny, run_until_killed

FAST = TrainConfig(epochs=3, batch_size=256, patience=5, progress=False, seed=7)


def test_same_seed_gives_the_same_metrics():
    data = load_tiny()
    a = run(data, RunConfig("deepfm", train=FAST))
    b = run(data, RunConfig("deepfm", train=FAST))
    assert a["metrics"] == b["metrics"]


def test_resume_after_interruption_ends_like_an_uninterrupted_run(tmp_path):
    data = load_tiny()
    config = RunConfig("deepfm", train=FAST)
    straight = run(data, config, tmp_path / "a")
    model, d = build_model(data, config)
    with pytest.raises(KeyboardInterrupt):
        train_model(model, d, config, tmp_path / "b", callbacks=[Interrupt(at_step=15)])
    model, d = build_model(data, config)
    resumed = train_model(model, d, config, tmp_path / "b", resume=True)
    assert resumed["metrics"] == straight["metrics"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]


def test_real_kill_then_resume_matches_uninterrupted_cli_run(tmp_path):
    args = ["train", "--synthetic-rows", "4000", "--epochs", "3", "--batch-size", "128", "--quiet", "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    killer = (
        "import os, signal, sys\n"
        "from embslim.train import trainer\n"
        "orig = trainer.Trainer.train_epoch\n"
        "def train_epoch(self, epoch):\n"
        "    if epoch == 1:\n"
        "        self.callbacks.append(type('K', (), {'on_batch_end': lambda s, t, step: os.kill(os.getpid(), signal.SIGKILL) if step == 40 else None})())\n"
        "    return orig(self, epoch)\n"
        "trainer.Trainer.train_epoch = train_epoch\n"
        "from embslim.cli import main\n"
        f"sys.exit(main({args + ['--out', str(tmp_path / 'b')]!r}))\n"
    )
    run_until_killed(killer)
    assert not (tmp_path / "b" / "results.json").exists() and (tmp_path / "b" / "checkpoint.pt").exists()
    assert main(args + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["metrics"] == b["metrics"]


def test_results_json_has_the_documented_shape(tmp_path):
    assert main(["train", "--synthetic-rows", "3000", "--epochs", "1", "--quiet", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert set(r["metrics"]) == {"val", "test"} and set(r["metrics"]["test"]) == {"auc", "logloss"}
    assert r["embedding"]["bytes"] > 0 and r["embedding"]["params"] > 0
    assert r["timing"]["wall_seconds"] > 0 and r["timing"]["train_samples_per_second"] > 0
    assert r["config"]["dataset"] == "synthetic" and r["config"]["model"] == "deepfm"
    assert (tmp_path / "embedding.safetensors").exists()


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    data = load_tiny()
    r = run(data, RunConfig("deepfm", train=TrainConfig(epochs=30, batch_size=64, lr=0.05, patience=1, progress=False)))
    assert len(r["history"]) < 30


def test_learning_rate_decays_after_each_epoch_without_improvement():
    data = load_tiny()
    model, d = build_model(data, RunConfig("deepfm"))
    trainer = Trainer(model, d, TrainConfig(epochs=6, batch_size=64, lr=0.05, patience=10, lr_decay=0.5, progress=False))
    history = trainer.fit()["history"]
    best, bad = None, 0
    for h in history:
        if best is None or h["val_auc"] > best:
            best = h["val_auc"]
        else:
            bad += 1
    assert bad > 0
    assert all(g["lr"] == pytest.approx(0.05 * 0.5 ** bad) for opt in trainer.optimizers for g in opt.param_groups)


def test_keep_best_false_ends_with_the_last_epoch_weights():
    data = load_tiny()
    model, d = build_model(data, RunConfig("deepfm"))
    config = TrainConfig(epochs=4, batch_size=64, lr=0.05, patience=10, keep_best=False, progress=False)
    result = Trainer(model, d, config).fit()
    assert result["val"]["auc"] == pytest.approx(result["history"][-1]["val_auc"])


def test_a_fine_tune_keeps_its_starting_weights_when_no_epoch_beats_them():
    data = load_tiny()
    model, d = build_model(data, RunConfig("deepfm"))
    Trainer(model, d, FAST).fit()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    harmful = TrainConfig(epochs=2, batch_size=256, lr=1.0, patience=1, progress=False, start_is_candidate=True)  # AUC ~0.5 after one epoch
    result = Trainer(model, d, harmful).fit()
    assert result["history"][0]["epoch"] == 0 and result["history"][0]["val_auc"] > result["history"][1]["val_auc"] + 0.05
    assert result["val"]["auc"] == result["history"][0]["val_auc"]
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_a_run_from_scratch_does_not_validate_its_initial_weights():
    data = load_tiny()
    model, d = build_model(data, RunConfig("deepfm"))
    assert [h["epoch"] for h in Trainer(model, d, FAST).fit()["history"]] == [1, 2, 3]


def test_rating_task_reports_rmse_and_mae(ml100k):
    from embslim.data import load_dataset

    data = load_dataset("movielens-100k", "rating", ml100k)
    r = run(data, RunConfig("mf", EmbeddingConfig(dim=4, init_std=0.1), train=TrainConfig(epochs=1, batch_size=2048, lr=0.01, progress=False)))
    assert set(r["metrics"]["test"]) == {"rmse", "mae"} and r["metrics"]["test"]["rmse"] < 1.2


def test_topk_ranks_all_items_excluding_seen_ones(tmp_path):
    from embslim.data import load_dataset

    ratings = "".join(f"{u},{i},4.0,{u * 100 + i}\n" for u in range(1, 9) for i in range(1, 7) if (u + i) % 3)
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    data = load_dataset("movielens-latest-small", "topk", tmp_path)
    r = run(data, RunConfig("mf", EmbeddingConfig(dim=4), train=TrainConfig(epochs=2, progress=False)))
    assert {"hr@10", "ndcg@10", "recall@20", "hr@50", "mrr"} <= set(r["metrics"]["test"])
    assert r["metrics"]["test"]["hr@10"] == 1.0


