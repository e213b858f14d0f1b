"""The training step's fast path: the CTR backbones read all fields as one [B, F, d] tensor where the embedding gives it,
and train exactly as through the per-field list."""
import copy

import pytest
import torch

from embslim.embeddings import EmbeddingConfig
from embslim.embeddings.batch import SparseBatch
from embslim.errors import ConfigError
from embslim.train.run import RunConfig, build_model
from embslim.train.trainer import TrainConfig, Trainer
from conftest import load_tiny

CONFIG = TrainConfig(epochs=1, batch_size=256, progress=False, seed=3)


def per_field(model):
    """The same model forced onto the per-field path (the step as it was before the fast path)."""
    slow = copy.deepcopy(model)
    slow.embedding.stacked = lambda batch: None
    return slow


def losses(model, data, steps: int = 6, config: TrainConfig = CONFIG) -> list[float]:
    trainer = Trainer(model, data, config)
    torch.manual_seed(0)
    return [trainer.train_step(batch)[0].item() for batch, _ in zip(trainer.objective.batches(0), range(steps))]


def test_full_embedding_gives_one_stacked_tensor_equal_to_its_per_field_vectors():
    model, data = build_model(load_tiny(), RunConfig("deepfm", EmbeddingConfig(dim=8), train=CONFIG))
    batch = SparseBatch.from_table(data.split("train"), torch.arange(64).numpy())
    stacked = model.embedding.stacked(batch)
    assert stacked.shape == (64, len(model.embedding.fields), 8)
    assert all(torch.equal(s, v) for s, v in zip(stacked.unbind(1), model.embedding(batch)))


def test_mixed_widths_fall_back_to_the_per_field_path():
    data = load_tiny()
    dims = {data.table.fields[0].name: 4}
    model, data = build_model(data, RunConfig("deepfm", EmbeddingConfig(dim=8, dims=dims), train=CONFIG))
    batch = SparseBatch.from_table(data.split("train"), torch.arange(8).numpy())
    assert model.embedding.stacked(batch) is None


def test_stacked_forward_equals_per_field_forward_bit_for_bit():
    for name in ("lr", "fm", "deepfm", "dcnv2", "autoint"):
        model, data = build_model(load_tiny(), RunConfig(name, EmbeddingConfig(dim=8), train=CONFIG))
        assert model.stacked_input(SparseBatch.from_table(data.split("train"), torch.arange(4).numpy())) is not None
        model.eval()
        batch = SparseBatch.from_table(data.split("train"), torch.arange(128).numpy())
        assert torch.equal(model(batch), per_field(model)(batch))


def test_stacked_training_gives_the_same_losses_and_weights_as_per_field_training():
    model, data = build_model(load_tiny(), RunConfig("deepfm", EmbeddingConfig(dim=8), train=CONFIG))
    slow = per_field(model)
    fast_losses, slow_losses = losses(model, data), losses(slow, data)
    assert torch.allclose(torch.tensor(fast_losses), torch.tensor(slow_losses), rtol=1e-5, atol=1e-7)
    for (name, a), b in zip(model.state_dict().items(), slow.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def test_lazy_adam_updates_like_sparse_adam_on_repeated_rows():
    from embslim.train.table_optim import LazyAdam

    torch.manual_seed(0)
    start = torch.randn(50, 4)
    fast, slow = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opts = [LazyAdam([fast], lr=0.01), torch.optim.SparseAdam([slow], lr=0.01)]
    for _ in range(5):
        rows = torch.randint(0, 20, (64,))  # many repeats; rows 20.. never touched
        grad = torch.randn(64, 4)
        for p, opt in zip((fast, slow), opts):
            p.grad = torch.sparse_coo_tensor(rows[None], grad, p.shape, check_invariants=True)
            opt.step()
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast[20:], start[20:])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.allclose(opts[0].state[fast][key], opts[1].state[slow][key], rtol=1e-5, atol=1e-7)
    assert opts[0].state[fast]["step"] == opts[1].state[slow]["step"] == 5


def test_bf16_dense_precision_trains_close_to_fp32_with_fp32_weights():
    model, data = build_model(load_tiny(), RunConfig("deepfm", EmbeddingConfig(dim=8), train=CONFIG))
    half = copy.deepcopy(model)
    exact = losses(model, data)
    approx = losses(half, data, len(exact), TrainConfig(epochs=1, batch_size=256, progress=False, seed=3, dense_precision="bf16"))
    assert approx != exact  # the matmuls did run in bfloat16
    assert torch.allclose(torch.tensor(approx), torch.tensor(exact), rtol=0.02)
    assert all(p.dtype == torch.float32 for p in half.parameters())


def test_unknown_dense_precision_is_a_config_error():
    model, data = build_model(load_tiny(), RunConfig("deepfm", EmbeddingConfig(dim=8), train=CONFIG))
    with pytest.raises(ConfigError, match="dense precision"):
        Trainer(model, data, TrainConfig(progress=False, dense_precision="fp8"))


def test_bits_dropout_drops_about_p_and_keeps_the_expected_value():
    from embslim.models.layers import BitsDropout

    drop = BitsDropout(0.25)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes exactly where the value did, with the same scale
    assert torch.equal(drop.eval()(x), x)


def test_dropout_mask_option_reaches_the_mlp_and_is_checked():
    from embslim.models import ModelOptions
    from embslim.models.layers import BitsDropout

    model, _ = build_model(load_tiny(), RunConfig("deepfm", EmbeddingConfig(dim=8), ModelOptions.from_dict({"dropout_mask": "bits"}), CONFIG))
    assert any(isinstance(m, BitsDropout) for m in model.deep)
    with pytest.raises(ConfigError, match="dropout mask"):
        ModelOptions.from_dict({"dropout_mask": "gaussian"})
