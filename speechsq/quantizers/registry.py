"""Name -> quantizer class registry (configs and recipes select quantizers by name)."""

from __future__ import annotations

import inspect
from typing import Callable

from speechsq.quantizers.base import Quantizer, QuantizerInputError

_REGISTRY: dict[str, type[Quantizer]] = {}


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator: make a quantizer buildable as ``build_quantizer(name, ...)``."""

    def wrap(cls: type[Quantizer]) -> type[Quantizer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"quantizer name {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def list_quantizers() -> list[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


def quantizer_class(name: str) -> type[Quantizer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise QuantizerInputError(f"unknown quantizer {name!r}; known quantizers: {', '.join(list_quantizers())}") from None


def build_quantizer(name: str, num_codes: int, code_dim: int, **options) -> Quantizer:
    """Build a registered quantizer; unknown names and options are clear errors."""
    cls = quantizer_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        accepted = [p for p in params if p not in ("self", "num_codes", "code_dim")]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise QuantizerInputError(
                f"quantizer {name!r} does not take option(s) {unknown}; it accepts: {', '.join(accepted) or 'none'}"
            )
    return cls(num_codes=num_codes, code_dim=code_dim, **options)
