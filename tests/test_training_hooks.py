"""The hooks a learned-size method trains through: step context, gradient edits, loss passes, final size, optimiser resets."""
import torch

from conftest import load_tiny
from embslim.embeddings import EmbeddingConfig, create_embedding
from embslim.embeddings.base import StepContext
from embslim.embeddings.full import FullEmbedding
from embslim.models import create_model
from embslim.train.trainer import TrainConfig, Trainer


class Recording(FullEmbedding):
    """Full tables that record what the trainer tells them and can claim a size that is not yet final."""

    def __init__(self, fields, dims, final_after_step: int = 0, passes: int = 1) -> None:
        super().__init__(fields, dims)
        self.final_after_step, self.passes = final_after_step, passes
        self.contexts: list[tuple[str, int, int]] = []
        self.loss_calls = 0
        self.last_step = 0

    def train_loss(self, task_loss):
        self.loss_calls += 1
        return sum(task_loss() for _ in range(self.passes))

    def before_optimizer_step(self, ctx: StepContext) -> None:
        assert all(t.grad is not None for t in self.tables)
        self.contexts.append(("before", ctx.step, ctx.total_steps))

    def on_step_end(self, ctx: StepContext) -> None:
        self.contexts.append(("after", ctx.step, ctx.total_steps))
        self.last_step = ctx.step

    def size_is_final(self) -> bool:
        return self.last_step >= self.final_after_step


def trainer_for(embedding_kwargs: dict, **train) -> Trainer:
    data = load_tiny()
    emb = Recording(data.table.fields, [4] * len(data.table.fields), **embedding_kwargs)
    model = create_model("fm", emb, task="ctr", user_field=data.user_field, item_field=data.item_field)
    return Trainer(model, data, TrainConfig(progress=False, **train))


def test_hooks_see_each_step_before_and_after_the_update_with_the_planned_total():
    trainer = trainer_for({}, epochs=2, batch_size=512, patience=5)
    trainer.fit()
    per_epoch = -(-len(trainer.data.split("train")) // 512)
    contexts = trainer.model.embedding.contexts
    assert len(contexts) == 2 * 2 * per_epoch
    assert contexts[:2] == [("before", 0, 2 * per_epoch), ("after", 1, 2 * per_epoch)]
    assert contexts[-1] == ("after", 2 * per_epoch, 2 * per_epoch)


def test_the_step_context_costs_no_copy_of_the_training_rows(monkeypatch):
    from embslim.data.fields import FeatureTable

    trainer = trainer_for({}, epochs=1, batch_size=512)
    batch = next(iter(trainer.objective.batches(0)))
    copies = []
    monkeypatch.setattr(FeatureTable, "take", lambda self, rows: copies.append(len(rows)))
    trainer.train_step(batch)  # the hooks ask for the planned total of steps twice a step
    assert copies == []


def test_train_loss_wraps_the_task_loss_of_each_batch():
    trainer = trainer_for({"passes": 2}, epochs=1, batch_size=512)
    batch = next(trainer.objective.batches(0))
    assert torch.allclose(trainer.loss(batch), 2 * trainer.objective.loss(batch))


def test_epochs_before_the_size_is_final_are_never_kept_as_best():
    trainer = trainer_for({"final_after_step": 10**9}, epochs=3, batch_size=512, patience=1)
    result = trainer.fit()
    assert len(result["history"]) == 3  # no early stop: no epoch counted toward patience


def test_reset_state_zeroes_the_moments_of_the_selected_rows_only():
    param = torch.nn.Parameter(torch.ones(4, 3))
    opt = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.ones(4, 3)
    opt.step()
    StepContext(1, 1, [opt]).reset_state(param, torch.tensor([True, False, True, False]))
    moments = opt.state[param]["exp_avg"]
    assert moments[[0, 2]].abs().sum() == 0 and (moments[[1, 3]] != 0).all()
    assert opt.state[param]["step"] == 1


def test_reset_state_of_a_parameter_without_state_does_nothing():
    param = torch.nn.Parameter(torch.ones(2))
    StepContext(0, 1, [torch.optim.Adam([param])]).reset_state(param)


def test_default_hooks_leave_the_loss_and_the_size_alone():
    data = load_tiny()
    emb = create_embedding(data.table.fields, EmbeddingConfig("full", dim=4))
    assert emb.size_is_final() and emb.train_loss(lambda: torch.tensor(2.0)) == 2.0
