"""Decoder likelihoods, selected by name (``LIKELIHOODS.get(name)``)."""

from speechsq.likelihoods.base import LIKELIHOODS, Likelihood, LikelihoodOutput


def _import_likelihood_modules() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_likelihood_modules()

__all__ = ["LIKELIHOODS", "Likelihood", "LikelihoodOutput"]
