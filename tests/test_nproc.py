"""Data-parallel training (`embslim train --nproc N`): two gloo ranks on CPU take the step one process takes."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_tiny
from embslim.cli import main
from embslim.embeddings import EmbeddingConfig
from embslim.embeddings.batch import SparseBatch, padded_to_bag
from embslim.errors import ConfigError
from embslim.models import ModelOptions
from embslim.train import distributed
from embslim.train.run import RunConfig, build_model, run
from embslim.train.trainer import TrainConfig, Trainer

BATCH = 101  # odd: the two ranks' slices differ by a row, so the loss weighting matters
CONFIG = RunConfig("deepfm", EmbeddingConfig("full", 8), ModelOptions(dropout=0.0),  # no dropout: the same function on every row
                   TrainConfig(epochs=1, batch_size=BATCH, table_optimizer="sgd", progress=False))


class StopAfterFirstStep(Exception):
    pass


class Record:
    """Callback: the gradients and parameters right after the first optimizer step, then stop."""

    def on_batch_end(self, trainer: Trainer, step: int) -> None:
        grads = {n: p.grad.to_dense().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        self.state = {"grads": grads, "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()}}
        raise StopAfterFirstStep


def first_step(config: RunConfig) -> dict:
    model, data = build_model(load_tiny(), config)
    record = Record()
    with pytest.raises(StopAfterFirstStep):
        Trainer(model, data, config.train, callbacks=[record]).fit()
    return record.state


def two_rank_job(folder: Path) -> None:
    """One rank (one spawn serves several tests): the first step's state to folder/rankR.pt, a whole run with
    output folder/outR, the test AUC of an mde run (an int16 buffer: gloo cannot broadcast it, so nothing
    is broadcast) and the error of a collisionless run (whose admission counts each rank's own ids)."""
    rank = distributed.current().rank
    torch.save(first_step(CONFIG), folder / f"rank{rank}.pt")
    run(load_tiny(), CONFIG, folder / f"out{rank}")
    mde = run(load_tiny(), replace(CONFIG, embedding=EmbeddingConfig("mde", 8, budget_bytes=2304)), None)
    (folder / f"mde{rank}.txt").write_text(str(mde["metrics"]["test"]["auc"]))
    try:
        run(load_tiny(), replace(CONFIG, embedding=EmbeddingConfig("collisionless", 8, budget_bytes=2304)), None)
    except ConfigError as err:
        (folder / f"error{rank}.txt").write_text(str(err))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nproc")
    distributed.spawn_run(two_rank_job, (folder,), 2)
    return folder


def test_two_ranks_take_the_one_process_step_on_the_same_global_batch(two_ranks):
    one = first_step(CONFIG)
    for rank in (0, 1):
        two = torch.load(two_ranks / f"rank{rank}.pt")
        assert two["grads"].keys() == one["grads"].keys()
        for name, grad in one["grads"].items():
            torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
        for name, param in one["params"].items():
            torch.testing.assert_close(two["params"][name], param, rtol=1e-4, atol=1e-6, msg=name)


def test_only_rank_zero_writes_results_and_records_nproc(two_ranks):
    assert not (two_ranks / "out1").exists()
    results = json.loads((two_ranks / "out0" / "results.json").read_text())
    assert results["config"]["nproc"] == 2
    assert (two_ranks / "out0" / "embedding.safetensors").exists()


def test_cli_nproc_2_writes_results_json_once(tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "synthetic", "--synthetic-rows", "3000", "--epochs", "1", "--dim", "8", "--nproc", "2",
               "--out", str(out), "--quiet"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["nproc"] == 2 and 0 < results["metrics"]["test"]["auc"] <= 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "data_args.json", "embedding.safetensors", "results.json"]


def test_a_method_with_an_int16_buffer_trains_on_two_ranks_to_the_same_result(two_ranks):
    assert (two_ranks / "mde0.txt").read_text() == (two_ranks / "mde1.txt").read_text()


def test_a_method_whose_state_learns_from_each_ranks_rows_is_refused_naming_it(two_ranks):
    for rank in (0, 1):
        message = (two_ranks / f"error{rank}.txt").read_text()
        assert "'collisionless'" in message and "--nproc 1" in message and "\n" not in message


def test_rank_slices_partition_the_batch_and_weight_to_the_global_mean():
    for batch in (1, 2, 3, 101, 1024):
        for world in (2, 3):
            parts = [distributed.shard_rows(batch, r, world) for r in range(world)]
            if batch < world:
                assert all(s == slice(0, batch) and w == 1.0 for s, w in parts)
                continue
            rows = np.concatenate([np.arange(batch)[s] for s, _ in parts])
            assert np.array_equal(rows, np.arange(batch))
            for s, w in parts:  # DDP averages over ranks: w / (world * rows of the slice) must be 1 / batch
                assert w / (world * (s.stop - s.start)) == pytest.approx(1 / batch)


def test_slice_batch_cuts_ids_labels_and_bags_alike():
    padded = torch.tensor([[1, 2, -1], [3, -1, -1], [4, 5, 6], [-1, -1, -1]])
    batch = SparseBatch(torch.arange(8).reshape(4, 2), {"tags": padded_to_bag(padded)}, torch.arange(4.0))
    part = distributed.slice_batch(batch, slice(1, 3))
    assert part.ids.tolist() == [[2, 3], [4, 5]] and part.label.tolist() == [1.0, 2.0]
    values, offsets = part.bags["tags"]
    assert values.tolist() == [3, 4, 5, 6] and offsets.tolist() == [0, 1, 4]


def test_stream_with_nproc_is_refused_in_one_line(capsys):
    rc = main(["train", "--dataset", "synthetic", "--stream", "--nproc", "2", "--quiet"])
    assert rc == 2 and "--stream trains in one process" in capsys.readouterr().err
