"""The shared trainer: generic training loop, schedules, checkpoints, data parallelism.

>>> from speechsq.training import load_model
>>> model, cfg = load_model("exp/sq_gauss1/checkpoints/last.pt")
"""

from speechsq.training.checkpoint import atomic_save, load_checkpoint
from speechsq.training.run import build_run, load_model, run_training
from speechsq.training.config import ConfigError, compose_config, validate_config
from speechsq.training.trainer import NonFiniteLossError, Trainer, TrainerConfig, TrainResult

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "atomic_save",
    "build_run",
    "compose_config",
    "load_checkpoint",
    "load_model",
    "run_training",
    "validate_config",
]
