"""LPT: int8 tables trained in place with stochastic rounding, a scale per row, and no float copy between steps."""
import numpy as np
import pytest
import torch

from embslim.data.fields import FieldSpec
from embslim.embeddings import EmbeddingConfig, create_embedding
from embslim.embeddings.base import StepContext
from embslim.embeddings.lpt import LPTEmbedding, LPTSettings, lpt_bytes, stochastic_quantize
from embslim.errors import BudgetError


def fields_of(*cards):
    return [FieldSpec(f"f{i}", c, np.ones(c, dtype=np.int64)) for i, c in enumerate(cards)]


def test_lpt_stochastic_rounding_is_unbiased():
    torch.manual_seed(0)
    row = torch.tensor([[1.0, 0.3337, -0.2501, 0.0049]])
    codes, scale = stochastic_quantize(row.expand(20_000, 4), 8, torch.float32)
    mean = (codes.float() * scale[:, None]).mean(0)
    assert torch.allclose(mean, row[0], atol=2e-4)
    assert len(codes[:, 1].unique()) == 2


def test_lpt_row_bytes_count_codes_scale_and_first_rows():
    fields = fields_of(100, 50)
    emb = create_embedding(fields, EmbeddingConfig("lpt", dim=16))
    assert emb.memory_bytes("serve") == lpt_bytes(fields, 16, LPTSettings()) == 150 * (16 + 4) + 2 * 8
    assert emb.memory_bytes("train") == emb.memory_bytes("serve") + 150 * 4
    sgd = create_embedding(fields, EmbeddingConfig("lpt", dim=16, options={"optimizer": "sgd", "scale": "fp16"}))
    assert sgd.memory_bytes("train") == sgd.memory_bytes("serve") == 150 * 18 + 16


def test_lpt_budget_below_the_natural_size_narrows_the_width():
    fields = fields_of(1000, 500)
    budget = lpt_bytes(fields, 16, LPTSettings()) // 2
    emb = create_embedding(fields, EmbeddingConfig("lpt", dim=16, budget_bytes=budget))
    assert emb.memory_bytes() <= budget < lpt_bytes(fields, emb.width + 1, LPTSettings()) and "keeps its precision" in emb.note
    with pytest.raises(BudgetError):
        create_embedding(fields, EmbeddingConfig("lpt", dim=16, budget_bytes=1500 * 4))


def train_tiny(emb: LPTEmbedding, steps: int) -> tuple[float, float]:
    """Fit a fixed random target per id through the embedding's own update; returns (first, last) loss."""
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(200, emb.width, generator=gen) * 0.05
    losses = []
    for step in range(steps):
        ids = torch.randint(0, 200, (64,), generator=gen)
        loss = (emb.lookup(0, ids) - target[ids]).pow(2).sum(1).mean()
        loss.backward()
        emb.on_step_end(StepContext(step + 1, 0))
        with torch.no_grad():
            losses.append((emb.field_table(0) - target).pow(2).sum(1).mean().item())
    return losses[0], losses[-1]


@pytest.mark.parametrize("optimizer,lr", [("adagrad", 0.01), ("sgd", 5.0)])
def test_lpt_training_steps_reduce_the_loss(optimizer, lr):
    torch.manual_seed(0)
    emb = LPTEmbedding(fields_of(200), 8, LPTSettings(optimizer=optimizer, lr=lr))
    first, last = train_tiny(emb, 150)
    assert last < 0.3 * first


def test_lpt_table_stays_int8_with_no_float_copy_after_training():
    torch.manual_seed(0)
    emb = LPTEmbedding(fields_of(200), 8, LPTSettings())
    train_tiny(emb, 5)
    assert emb.codes.dtype == torch.int8 and list(emb.parameters()) == [] and emb._touched == []
    assert {t.dtype for t in emb.buffers()} == {torch.int8, torch.float32, torch.int64}


def test_lpt_update_moves_only_the_rows_of_the_batch():
    torch.manual_seed(0)
    emb = LPTEmbedding(fields_of(50), 4, LPTSettings())
    before = emb.codes.clone()
    emb.lookup(0, torch.tensor([3, 7, 3])).sum().backward()
    emb.on_step_end(StepContext(1, 0))
    changed = (emb.codes != before).any(1).nonzero().flatten().tolist()
    assert set(changed) <= {3, 7} and 3 in changed and emb.adagrad.nonzero().flatten().tolist() == [3, 7]


def test_lpt_evaluation_lookups_record_nothing():
    emb = LPTEmbedding(fields_of(50), 4, LPTSettings())
    with torch.no_grad():
        emb.lookup(0, torch.tensor([1, 2]))
    emb.eval()
    emb.lookup(0, torch.tensor([1, 2]))
    assert emb._touched == []
