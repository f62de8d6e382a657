"""Building a training run from a composed config, and rebuilding models from checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from speechsq.training import distributed as D
from speechsq.training.checkpoint import load_checkpoint, seed_everything
from speechsq.training.config import ConfigError, validate_config
from speechsq.training.trainer import Trainer, TrainerConfig, TrainResult

log = logging.getLogger(__name__)


def build_run(cfg: DictConfig, dist_ctx: D.DistContext | None = None) -> Trainer:
    """Validate ``cfg``, build batch source, model and trainer (resumed if ``cfg.resume``)."""
    from speechsq.data import build_batch_source
    from speechsq.models import build_model

    validate_config(cfg)
    dist_ctx = dist_ctx or D.DistContext()
    seed = int(cfg.seed)
    try:
        source = build_batch_source(cfg.data, rank=dist_ctx.rank, world_size=dist_ctx.world_size, seed=seed)
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

    exp_dir = Path(cfg.exp_dir)
    if dist_ctx.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(run_config), exp_dir / "config.yaml")
        if hasattr(source, "write_metadata"):
            source.write_metadata(exp_dir)
    trainer = Trainer(
        model, source, TrainerConfig.from_mapping(run_config["training"]), exp_dir,
        run_config=run_config, dist_ctx=dist_ctx, seed=seed,
    )
    resume = cfg.get("resume")
    if resume:
        path = exp_dir / "checkpoints" / "last.pt" if resume == "auto" else Path(resume)
        if path.is_file():
            trainer.resume(path)
        elif resume == "auto":
            log.info("resume=auto: no checkpoint in %s yet, starting from scratch", path.parent)
        else:
            raise ConfigError(f"resume={resume}: no such checkpoint")
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


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, DictConfig]:
    """Rebuild the model of a checkpoint for evaluation: ``(model in eval mode, resolved config)``."""
    from speechsq.models import build_model

    state = load_checkpoint(checkpoint, map_location="cpu")
    cfg = OmegaConf.create(state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


