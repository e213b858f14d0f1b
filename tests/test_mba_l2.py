"""Mini-batch aware embedding L2 (the DIN paper's regulariser): each distinct row a batch reads, once, over its id's frequency."""
import pytest
import torch

from embslim.errors import ConfigError
from embslim.train.objectives import mba_l2
from embslim.train.run import RunConfig, fit, run
from embslim.train.trainer import TrainConfig
from conftest import load_tiny


def test_mba_l2_counts_each_distinct_row_once_over_its_training_frequency():
    ids = torch.tensor([[0, 2], [1, 2], [0, 2]])  # field 0: ids 0 (twice) and 1; field 1: id 2 (three times)
    rows0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])  # a repeated id reads the same row each time
    rows1 = torch.tensor([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0]])
    counts = [torch.tensor([4.0, 2.0, 1.0]), torch.tensor([1.0, 1.0, 9.0])]
    expected = 1.0 / 4 + 4.0 / 2 + 9.0 / 9
    assert torch.isclose(mba_l2([rows0, rows1], ids, counts), torch.tensor(expected))


def test_mba_l2_gradient_pulls_a_rare_ids_row_harder_than_a_frequent_ones():
    ids = torch.tensor([[0], [1]])
    rows = torch.ones(2, 3, requires_grad=True)
    mba_l2([rows], ids, [torch.tensor([100.0, 2.0])]).backward()
    assert rows.grad[1].norm() > 10 * rows.grad[0].norm()


def test_training_with_mba_l2_keeps_the_rows_it_reads_smaller_and_records_the_mode():
    def trained(l2: float, mode: str):
        config = TrainConfig(epochs=2, batch_size=256, progress=False, seed=3, embedding_l2=l2, embedding_l2_mode=mode)
        model, _, result = fit(load_tiny(), RunConfig("deepfm", train=config))
        return result, torch.cat([p.detach().reshape(-1) for p in model.embedding.sparse_parameters()]).pow(2).mean()

    plain, plain_norm = trained(0.0, "mean")
    regularised, regularised_norm = trained(10.0, "mba")
    assert regularised["config"]["train"]["embedding_l2_mode"] == "mba"
    assert regularised_norm < 0.5 * plain_norm


def test_unknown_l2_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="embedding L2 mode"):
        run(load_tiny(), RunConfig("deepfm", train=TrainConfig(epochs=1, progress=False, embedding_l2_mode="sum")))
