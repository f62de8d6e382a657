"""speechsq: discrete acoustic units with any quantizer, one trainer, ZeroSpeech scoring.

>>> import speechsq
>>> codec = speechsq.load("exp/mini/sq_gauss1/seed1/checkpoints/last.pt")   # doctest: +SKIP
>>> enc = codec.encode(wav, sample_rate)                                      # doctest: +SKIP

See :mod:`speechsq.api` for the full example. The names below are imported on first use,
so ``import speechsq`` stays instant (no torch import until a model is loaded).
"""

__version__ = "0.1.0"

_LAZY = {
    "load": "speechsq.api",
    "UnitCodec": "speechsq.api",
    "Encoding": "speechsq.api",
    "run_length_encode": "speechsq.api",
    "expand_units": "speechsq.api",
    "build_vocoder": "speechsq.vocoders",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'speechsq' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
