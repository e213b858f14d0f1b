"""Training, evaluation and checkpoints."""
from embslim.train import objective_pairwise  # noqa: F401  (registers the pairwise objective)
from embslim.train.trainer import TrainConfig, Trainer
from embslim.train import objective_sequence  # noqa: F401,E402  (registers the "sequence" objective)

__all__ = ["TrainConfig", "Trainer"]
