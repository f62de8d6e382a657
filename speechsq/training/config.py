"""Composing and checking the hydra config of ``speechsq train``.

The tree lives in ``speechsq/conf`` (groups ``data``, ``preprocessing``, ``model``,
``quantizer``, ``training``, ``experiment``) and is composed with hydra's compose API, not
``@hydra.main``, so that tests and other programs can call :func:`compose_config` directly.

Every mistake in a configuration is one line naming the key (:func:`validate_config`, with
the typed schema of :mod:`speechsq.training.schema`): a wrong type, an unknown key (with
the key you probably meant, whether it was given as ``key=value`` or ``+key=value``), a
missing required value. An override of a key inside a node that is an interpolation
(``training.temperature.decay=...``, where ``training.temperature`` is
``${quantizer.temperature}``) is applied to the node it refers to, with a log line.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

CONFIG_MODULE = "speechsq.conf"
CONFIG_NAME = "train"
GROUPS = ("experiment", "data", "preprocessing", "model", "quantizer", "training")
_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


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
    from hydra.errors import ConfigCompositionException

    overrides = list(overrides or [])
    _check_group_choices(overrides)
    try:
        return _compose(overrides)
    except ConfigCompositionException as err:
        if "Could not override" not in str(err):
            raise ConfigError(_one_line(f"cannot compose the config with overrides {overrides}: {err}")) from None
    # a `key=value` for a key the config does not have: redirect it through an interpolation,
    # or add it so that the schema names it (with a "did you mean")
    repaired = _repair_overrides(overrides)
    try:
        return _compose(repaired)
    except ConfigCompositionException as err:
        raise ConfigError(_one_line(f"cannot compose the config with overrides {overrides}: {err}")) from None


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name=CONFIG_NAME, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        if type(err).__name__ == "ConfigCompositionException" and "Could not override" in str(err):
            raise
        raise ConfigError(_one_line(f"cannot compose the config with overrides {overrides}: {err}")) from None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _value_override(item: str) -> tuple[str, str] | None:
    """``(key, value)`` of a plain ``key=value`` override of a value (not a group choice)."""
    if item[:1] in "+~":
        return None
    key, sep, value = item.partition("=")
    if not sep or key in GROUPS or "/" in key or "@" in key:
        return None
    return key, value


def _repair_overrides(overrides: list[str]) -> list[str]:
    plain = [o for o in overrides if _value_override(o) is None]
    base = _compose(plain)
    repaired = []
    for item in overrides:
        parsed = _value_override(item)
        if parsed is None:
            repaired.append(item)
            continue
        key, value = parsed
        status, target = _locate(base, key)
        if status == "exists":
            repaired.append(item)
        elif status == "interpolation":
            log.info("override %s: %s follows %s, so the override goes there: %s=%s", key, key.rsplit(".", 1)[0],
                     target.rsplit(".", 1)[0], target, value)
            repaired.append(f"{target}={value}")
        else:
            repaired.append(f"++{key}={value}")  # the schema reports it as an unknown key
    return repaired


def _locate(cfg: DictConfig, key: str) -> tuple[str, str]:
    """``("exists", key)``, ``("interpolation", redirected key)`` or ``("missing", key)``."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            return "missing", key
        if i < len(parts) - 1 and OmegaConf.is_interpolation(node, part):
            found = _INTERPOLATION.match(str(node._get_node(part)._value()))
            if found is None:
                return "missing", key
            status, target = _locate(cfg, ".".join([found.group(1), *parts[i + 1 :]]))
            return ("interpolation", target) if status == "exists" else (status, key)
        node = node._get_node(part) if i < len(parts) - 1 else node
    return "exists", key


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
    """One clear line for what would otherwise fail deep inside training (or not at all).

    Also fills in the defaults of optional keys that no config file sets (schema.optional).
    """
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
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if value is not None and value not in known:
            raise ConfigError(f"unknown {key} {value!r}; known: {', '.join(known)}")

    from omegaconf.errors import OmegaConfBaseException

    from speechsq.training.schema import RunSchema, SchemaError, validate_tree

    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        where = getattr(err, "full_key", None)
        raise ConfigError(_one_line(f"{where}: {err}" if where else str(err))) from None
    try:
        filled = validate_tree(tree, RunSchema)
    except SchemaError as err:
        raise ConfigError(str(err)) from None
    with open_dict(cfg):  # optional keys no file sets; a null default stays absent (`oc.select` defaults keep working)
        for key, default in filled:
            if default is not None:
                OmegaConf.update(cfg, key, default, force_add=True)
            tree_set(tree, key, default)

    _check_quantizer_options(tree["quantizer"])
    resume = tree["resume"]
    from speechsq.training.rundir import RESUME_MODES

    if resume not in RESUME_MODES and not resume.endswith(".pt"):
        raise ConfigError(f"resume: expected 'auto' (continue, the default), 'restart' (start over; the old run is "
                          f"moved aside) or a checkpoint path ending in .pt, got {resume!r}")
    try:
        from speechsq.training.trainer import TrainerConfig

        TrainerConfig.from_mapping(tree["training"])
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(_one_line(str(err).strip("'\""))) from None


def _check_quantizer_options(quantizer: dict) -> None:
    """``quantizer.options`` are free-form: the quantizer's constructor is their schema (built
    once here, before any data is read; the global random streams are left untouched)."""
    import torch

    from speechsq.quantizers import build_quantizer

    try:
        with torch.random.fork_rng():
            build_quantizer(quantizer["name"], num_codes=quantizer["num_codes"], code_dim=quantizer["code_dim"],
                            **(quantizer.get("options") or {}))
    except (ValueError, TypeError, KeyError) as err:
        text = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        raise ConfigError(_one_line(text if text.startswith("quantizer ") else f"quantizer: {text}")) from None


def tree_set(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


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
        "  training.steps=1000 training.device=cuda training.amp=bf16 seed=3",
        "re-running the same command continues from the newest checkpoint in exp_dir (resume=auto);",
        "  resume=restart starts over (the old run is moved to exp_dir/replaced/<time>), resume=PATH continues PATH",
        "  trust_checkpoint=true: also load checkpoints that need unpickling (older speechsq; only files you trust)",
        "validation: data.valid_feats_dir=feats/dev (speech) training.validation.every=N|epoch;",
        "  training.scheduler=multistep|plateau (plateau: LR x plateau.factor after plateau.patience validations",
        "  without improvement)",
        "likelihood per quantizer family: SQ family gaussian_closed_form (default) or",
        "  quantizer.likelihood.name=gaussian_trainable; VQ family gaussian_fixed with quantizer.likelihood.sigma2=0.01|0.1|1|10",
        "multi-process: torchrun --nproc_per_node N -m speechsq.training.cli OVERRIDES...",
    ]
    return "\n".join(lines)
