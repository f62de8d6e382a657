"""Composing and checking the hydra config of ``speechsq train``.

The tree lives in ``speechsq/conf`` (groups ``data``, ``preprocessing``, ``model``,
``quantizer``, ``training``, ``experiment``) and is composed with hydra's compose API, not
``@hydra.main``, so that tests and other programs can call :func:`compose_config` directly.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from speechsq.errors import SpeechsqError

CONFIG_MODULE = "speechsq.conf"
CONFIG_NAME = "train"
GROUPS = ("experiment", "data", "preprocessing", "model", "quantizer", "training")


class ConfigError(SpeechsqError, ValueError):
    """A config that cannot be trained: unknown names, missing required keys, incompatible options."""


def group_options(group: str) -> list[str]:
    """The option names of a config group (its yaml files)."""
    folder = resources.files(CONFIG_MODULE) / group
    if not folder.is_dir():
        return []
    return sorted(Path(entry.name).stem for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``train.yaml`` with hydra overrides (``quantizer=vq_ema data.feats_dir=...``)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    _check_group_choices(overrides)
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name=CONFIG_NAME, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot compose the config with overrides {overrides}: {err}") from None


def _check_group_choices(overrides: list[str]) -> None:
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if sep and key in GROUPS:
            known = group_options(key)
            if value not in known:
                extra = ""
                if key == "quantizer":
                    from speechsq.quantizers import list_quantizers

                    if value in list_quantizers():
                        extra = f" (quantizer {value!r} is registered but has no speechsq/conf/quantizer/{value}.yaml)"
                raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(known)}{extra}")


def validate_config(cfg: DictConfig) -> None:
    """Clear errors for what would otherwise fail deep inside training."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        hints = {"data.feats_dir": " (the feats dir of the training set, e.g. data.feats_dir=feats/train)"}
        raise ConfigError("required config value(s) not set: " + ", ".join(k + hints.get(k, "") for k in missing))

    from speechsq.data import BATCH_SOURCES
    from speechsq.likelihoods import LIKELIHOODS
    from speechsq.models import MODELS
    from speechsq.quantizers import list_quantizers

    checks = [
        ("quantizer.name", list_quantizers()),
        ("model.name", MODELS.names()),
        ("data.name", BATCH_SOURCES.names()),
        ("model.likelihood.name", LIKELIHOODS.names()),
    ]
    for key, known in checks:
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in known:
            raise ConfigError(f"unknown {key} {value!r}; known: {', '.join(known)}")

    try:
        from speechsq.training.trainer import TrainerConfig

        TrainerConfig.from_mapping(OmegaConf.to_container(cfg.training, resolve=True))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"training config: {err}") from None


def _missing_keys(cfg: DictConfig, prefix: str = "") -> set[str]:
    out = set()
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            out.add(full)
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation():
            out |= _missing_keys(node, full + ".")
    return out


def help_text() -> str:
    lines = ["config groups (select with GROUP=OPTION):"]
    for group in GROUPS:
        lines.append(f"  {group:<14} {', '.join(group_options(group))}")
    lines += [
        "",
        "shipped configurations: experiment=paper (SQ-VAE App. E.2.2, the default), experiment=mini (CPU, minutes)",
        "any key can be overridden: data.feats_dir=feats/train data.data_dir=data/train exp_dir=exp/run1",
        "  training.steps=1000 training.device=cuda training.amp=bf16 seed=3 resume=auto",
        "likelihood per quantizer family: SQ family gaussian_closed_form (default) or",
        "  quantizer.likelihood.name=gaussian_trainable; VQ family gaussian_fixed with quantizer.likelihood.sigma2=0.01|0.1|1|10",
        "multi-process: torchrun --nproc_per_node N -m speechsq.training.cli OVERRIDES...",
    ]
    return "\n".join(lines)
