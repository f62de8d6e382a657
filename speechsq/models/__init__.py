"""Trainable models, selected by name (``cfg.model.name``) through :data:`MODELS`.

Importing this package imports every model module, which registers its factory.
"""

from speechsq.models.base import ModelOutput
from speechsq.models.registry import MODELS, build_model


def _import_model_modules() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "registry") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_model_modules()

__all__ = ["MODELS", "ModelOutput", "build_model"]
