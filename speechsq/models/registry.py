"""Name -> model factory registry.

A factory takes the whole composed config (``cfg.model`` for the network, ``cfg.quantizer``
for the quantizer, anything else it needs) and returns an ``nn.Module`` that follows the
model contract of ``docs/ARCHITECTURE.md`` section 4::

    @MODELS.register("my_model")
    def build_my_model(cfg) -> nn.Module: ...

``cfg.model.name`` selects the factory.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from speechsq.registry import Registry

ModelFactory = Callable[[Any], nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


def build_model(cfg: Any) -> nn.Module:
    """Build ``cfg.model.name`` from the composed config (a DictConfig or nested dict)."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    name = OmegaConf.select(cfg, "model.name")
    if name is None:
        raise ValueError("config has no model.name; pick one of: " + ", ".join(MODELS.names()))
    try:
        factory = MODELS.get(str(name))
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    return factory(cfg)
