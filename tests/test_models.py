"""Every registered backbone, with uniform and mixed per-field dimensions (timm-style loop over the registry)."""
import pytest
import torch

from embslim.embeddings import EmbeddingConfig, SparseBatch
from embslim.models import ModelOptions, list_models
from embslim.models.layers import FieldAligner, fm_interaction
from embslim.train.run import RunConfig, build_model
from conftest import load_tiny


@pytest.mark.parametrize("name", list_models("ctr"))
@pytest.mark.parametrize("dims", [None, {"field0": 8, "field1": 3}])
def test_backbone_scores_every_row_and_learns(name, dims):
    data = load_tiny().select_fields(["field0", "field1", "field2", "field3"])
    data.user_field, data.item_field = "field0", "field1"
    config = RunConfig(name, EmbeddingConfig(dim=4, dims=dims), ModelOptions(hidden=(16,), attention_layers=1, cross_layers=1))
    model, data = build_model(data, config)
    batch = SparseBatch.from_table(data.split("train"))
    sparse = {id(p) for p in model.embedding.sparse_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in sparse], lr=0.01)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model(batch).shape == (len(batch),)
    assert losses[-1] < losses[0]


def test_mixed_width_projections_are_counted_in_embedding_bytes():
    data = load_tiny()
    uniform, _ = build_model(data, RunConfig("fm", EmbeddingConfig(dim=4)))
    mixed, _ = build_model(data, RunConfig("fm", EmbeddingConfig(dim=4, dims={"field0": 8})))
    projection = sum(p.numel() * 4 for p in mixed.aligner.parameters())
    assert projection > 0
    assert mixed.embedding_bytes() == mixed.embedding.memory_bytes() + projection
    assert uniform.embedding_bytes() == uniform.embedding.memory_bytes()


def test_fm_interaction_equals_sum_of_pairwise_inner_products():
    x = torch.randn(5, 4, 3)
    pairs = sum((x[:, i] * x[:, j]).sum(1) for i in range(4) for j in range(i + 1, 4))
    assert torch.allclose(fm_interaction(x), pairs, atol=1e-5)


def test_aligner_projects_only_fields_of_another_width():
    aligner = FieldAligner([4, 2, 4])
    out = aligner([torch.ones(3, 4), torch.ones(3, 2), torch.zeros(3, 4)])
    assert out.shape == (3, 3, 4) and list(aligner.proj) == ["1"]


ROTATION_INVARIANT = {"lr", "fm", "deepfm", "mf"}


def tiny_model(name: str):
    data = load_tiny().select_fields(["field0", "field1", "field2", "field3"])
    data.user_field, data.item_field = "field0", "field1"
    model, data = build_model(data, RunConfig(name, EmbeddingConfig(dim=4), ModelOptions(hidden=(16,), attention_layers=1, cross_layers=1)))
    return model.eval(), SparseBatch.from_table(data.split("val"))


@pytest.mark.parametrize("name", sorted(ROTATION_INVARIANT))
def test_rotation_of_all_embeddings_leaves_invariant_backbones_unchanged(name):
    model, batch = tiny_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    before = model(batch)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))
    model.absorb_rotation(rotation)
    with torch.no_grad():
        model.embedding.sparse_parameters()[0].copy_(model.embedding.sparse_parameters()[0] @ rotation)
    torch.testing.assert_close(model(batch), before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(set(list_models("ctr")) - ROTATION_INVARIANT))
def test_backbones_that_are_not_rotation_invariant_refuse_to_absorb_one(name):
    model, _ = tiny_model(name)
    with pytest.raises(NotImplementedError):
        model.absorb_rotation(torch.eye(4))
