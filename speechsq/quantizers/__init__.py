"""Quantizers behind one interface.

>>> from speechsq.quantizers import build_quantizer, list_quantizers
>>> q = build_quantizer("sq_gauss1", num_codes=512, code_dim=64)
>>> out = q(z)            # z: (B, T, q.input_dim) or (B, q.input_dim, H, W)
>>> out.z_q, out.indices, out.loss, out.terms, out.metrics

Importing this package imports every quantizer module, which registers its names.
"""

from speechsq.quantizers.base import (
    PAD_INDEX,
    FlatQuantized,
    Quantizer,
    QuantizerInputError,
    QuantizerOutput,
    StepContext,
)
from speechsq.quantizers.loss_scale import commitment_weight, kl_weight_from_paper
from speechsq.quantizers.registry import build_quantizer, list_quantizers, quantizer_class, register_quantizer



def _import_quantizer_modules() -> None:
    """Import every module of this package once: each registers its quantizer names."""
    import importlib
    import pkgutil

    infrastructure = {"base", "registry", "functional", "init", "loss_scale"}
    for info in pkgutil.iter_modules(__path__):
        if info.name not in infrastructure and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_quantizer_modules()

__all__ = [
    "PAD_INDEX",
    "FlatQuantized",
    "Quantizer",
    "QuantizerInputError",
    "QuantizerOutput",
    "StepContext",
    "build_quantizer",
    "commitment_weight",
    "kl_weight_from_paper",
    "list_quantizers",
    "quantizer_class",
    "register_quantizer",
]
