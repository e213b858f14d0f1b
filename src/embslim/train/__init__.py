"""Training, evaluation and checkpoints."""
from embslim.train import objective_pairwise  # noqa: F401  (registers the pairwise objective)
from embslim.train.trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]
