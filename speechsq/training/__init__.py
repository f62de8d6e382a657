"""The shared trainer: generic training loop, schedules, checkpoints, data parallelism.

>>> from speechsq.training import load_model
>>> model, cfg = load_model("exp/sq_gauss1/checkpoints/last.pt")   # or an exported model directory
"""

from speechsq.training.checkpoint import CheckpointError, UnsafeCheckpointError, atomic_save, load_checkpoint
from speechsq.training.config import ConfigError, compose_config, validate_config
from speechsq.training.export import export_model
from speechsq.training.lock import RunLock, RunLockedError
from speechsq.training.run import build_run, load_model, run_training
from speechsq.training.trainer import NonFiniteLossError, Trainer, TrainerConfig, TrainResult

__all__ = [
    "CheckpointError",
    "ConfigError",
    "NonFiniteLossError",
    "RunLock",
    "RunLockedError",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "UnsafeCheckpointError",
    "atomic_save",
    "build_run",
    "compose_config",
    "export_model",
    "load_checkpoint",
    "load_model",
    "run_training",
    "validate_config",
]
