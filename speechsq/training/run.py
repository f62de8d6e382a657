"""Building a training run from a composed config, and rebuilding models for inference.

:func:`build_run` checks everything that can be checked before a single file is written:
the config (schema), the run lock on ``exp_dir`` (one run per directory), the checkpoint to
continue from (``resume``, see :mod:`speechsq.training.rundir`) and whether it fits the
requested model. Only then does it move an old run aside (``resume=restart``) and write
``config.yaml`` and the data's metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from speechsq.completion import atomic_write_text
from speechsq.errors import SpeechsqError
from speechsq.threads import configure_threads
from speechsq.training import distributed as D
from speechsq.training.checkpoint import load_checkpoint, seed_everything
from speechsq.training.config import ConfigError, validate_config
from speechsq.training.lock import RunLock
from speechsq.training.rundir import RunDir, check_compatible, plan_resume
from speechsq.training.trainer import Trainer, TrainerConfig, TrainResult, resolve_device

log = logging.getLogger(__name__)


class _Recorder(logging.Handler):
    """Keeps the log records of the set-up, replayed into train.log once writing is allowed."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def build_run(cfg: DictConfig, dist_ctx: D.DistContext | None = None) -> Trainer:
    """Validate ``cfg``, lock ``exp_dir``, pick the checkpoint to continue from, build batch
    source, model and trainer (restored), and only then write ``config.yaml``.

    The returned trainer holds the run lock until its ``fit()`` ends.
    """
    recorder = _Recorder()
    logger = logging.getLogger("speechsq")
    logger.addHandler(recorder)
    try:
        validate_config(cfg)
        dist_ctx = dist_ctx or D.DistContext()
        threads = configure_threads(cfg.training.num_threads)
        log.info("intra-op threads: %d (training.num_threads=%s)", threads, cfg.training.num_threads)
        exp_dir = Path(cfg.exp_dir)
        lock = _lock_on_main(exp_dir, dist_ctx, str(cfg.training.device))
        try:
            trainer = _build_locked(cfg, dist_ctx, exp_dir, lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        trainer.pending_log_records = recorder.records
        return trainer
    finally:
        logger.removeHandler(recorder)


def _lock_on_main(exp_dir: Path, dist_ctx: D.DistContext, device_name: str) -> RunLock | None:
    lock, failure = None, None
    if dist_ctx.is_main:
        try:
            lock = RunLock(exp_dir).acquire()
        except SpeechsqError as err:
            failure = err
    if dist_ctx.enabled and not D.all_true(failure is None, resolve_device(device_name, dist_ctx)):
        if failure is None:
            raise SpeechsqError(f"{exp_dir}: the main process could not lock the experiment directory")
    if failure is not None:
        raise failure
    return lock


def _build_locked(cfg: DictConfig, dist_ctx: D.DistContext, exp_dir: Path, lock: RunLock | None) -> Trainer:
    from speechsq.data import build_batch_source
    from speechsq.data.validation import build_validation_source
    from speechsq.models import build_model

    run_dir = RunDir(exp_dir)
    if dist_ctx.is_main:
        run_dir.remove_leftover_temporaries()
    plan = plan_resume(str(cfg.resume), run_dir, allow_pickle=bool(cfg.get("trust_checkpoint", False)))

    seed = int(cfg.seed)
    try:
        source = build_batch_source(cfg.data, rank=dist_ctx.rank, world_size=dist_ctx.world_size, seed=seed)
        validation = build_validation_source(cfg.data, rank=dist_ctx.rank, world_size=dist_ctx.world_size,
                                             train_source=source)
    except SpeechsqError:
        raise
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"data: {err}") from err

    # options that come from the data (speech: speaker count and names) become part of the
    # model config, so the checkpoint's resolved config rebuilds the same model
    overrides = source.model_overrides() if hasattr(source, "model_overrides") else {}
    with open_dict(cfg):
        for key, value in overrides.items():
            cfg.model[key] = value
    seed_everything(seed)  # identical initial weights on every process
    try:
        model = build_model(cfg)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from err
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if plan.state is not None:
        check_compatible(plan.state.get("config") or {}, run_config, plan.path)

    trainer = Trainer(
        model, source, TrainerConfig.from_mapping(run_config["training"]), exp_dir,
        run_config=run_config, dist_ctx=dist_ctx, seed=seed, validation_source=validation, lock=lock,
    )
    if plan.state is not None:
        trainer.restore(plan.state, plan.path)

    # everything is checked: from here on the directory is written
    if dist_ctx.is_main:
        if plan.move_aside:
            run_dir.move_aside()
        atomic_write_text(exp_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(run_config)))
        if hasattr(source, "write_metadata"):
            source.write_metadata(exp_dir)
    return trainer


def run_training(cfg: DictConfig) -> TrainResult:
    """Train with a composed config; sets up torchrun's process group when there is one."""
    device_name = str(OmegaConf.select(cfg, "training.device", default="auto"))
    device_type = "cuda" if device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available()) else "cpu"
    dist_ctx = D.init_from_env(device_type)
    try:
        return build_run(cfg, dist_ctx).fit()
    finally:
        if dist_ctx.enabled:
            D.shutdown()


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               allow_pickle: bool = False) -> tuple[torch.nn.Module, DictConfig]:
    """A trained model for inference: ``(model in eval mode, resolved config)``.

    ``path``: a training checkpoint (``.../checkpoints/last.pt``) or an exported model
    (the directory ``speechsq export-model`` writes, or its ``model.safetensors``). Neither
    is unpickled: checkpoints load with ``torch.load(weights_only=True)``, exported weights
    are safetensors. ``allow_pickle=True`` also loads checkpoints of older speechsq versions
    that need unpickling (only for files you trust; a warning is logged).
    """
    from speechsq.models import build_model
    from speechsq.training.export import is_exported_model, load_exported

    path = Path(path)
    if is_exported_model(path):
        weights, cfg = load_exported(path)
    else:
        state = load_checkpoint(path, map_location="cpu", allow_pickle=allow_pickle)
        weights, cfg = state["model"], OmegaConf.create(state["config"])
    model = build_model(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(f"{path}: the weights do not fit the model its config describes: "
                          f"{' '.join(str(err).split())[:300]}") from None
    return model.to(device).eval(), cfg
