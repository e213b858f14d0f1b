"""Training, evaluation and checkpoints."""
from embslim.train.trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]
