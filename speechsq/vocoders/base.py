"""The vocoder interface and its registry.

A vocoder turns the model's log-Mel output ``(n_mels, frames)``, in the units of the
features the model was trained on, into a waveform at the features' sample rate. It owns
the inversion of the feature normalisation (:mod:`speechsq.vocoders.inverse`), so callers
never need to know which pipeline made the features.

    vocoder = build_vocoder("griffin_lim", cfg.preprocessing)          # offline default
    vocoder = build_vocoder("parallel_wavegan", cfg.preprocessing, cmvn,
                            checkpoint="pwg/checkpoint-400000steps.pkl")  # a user-trained one
    wav = vocoder(log_mel)                                             # (samples,) float32, CPU
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechsq.registry import Registry
from speechsq.vocoders.inverse import FeatureInverse, VocoderError, build_inverse


class Vocoder(ABC):
    """log-Mel (model feature units) -> waveform. Subclasses implement :meth:`synthesize`."""

    name: str = ""

    def __init__(self, inverse: FeatureInverse, device: str | torch.device = "cpu"):
        self.inverse = inverse
        self.device = torch.device(device)

    @property
    def sample_rate(self) -> int:
        return self.inverse.sample_rate

    @abstractmethod
    def synthesize(self, feats: Tensor) -> np.ndarray:
        """Checked ``(n_mels, T)`` features on ``self.device`` -> float waveform."""

    def __call__(self, log_mel: Tensor | np.ndarray) -> Tensor:
        """``(n_mels, T)`` log-Mel in the model's feature units -> ``(samples,)`` float32 on the CPU."""
        feats = self.inverse.check_features(log_mel).to(self.device)
        with torch.no_grad():
            wav = self.synthesize(feats)
        return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))


VOCODERS: Registry[type[Vocoder]] = Registry("vocoder")


def build_vocoder(
    name: str, preprocessing: Any, cmvn=None, device: str | torch.device = "cpu", **options
) -> Vocoder:
    """A registered vocoder for the features of ``preprocessing`` (a config node, a mapping or a
    pipeline name); ``cmvn`` is the training-set :class:`~speechsq.features.Cmvn` of
    standardised pipelines; ``options`` go to the vocoder (e.g. ``n_iter`` for Griffin-Lim,
    ``checkpoint`` for Parallel WaveGAN)."""
    from speechsq.features import build_pipeline

    try:
        cls = VOCODERS.get(name)
    except KeyError as err:
        raise VocoderError(err.args[0]) from None
    inverse = build_inverse(build_pipeline(preprocessing), cmvn)
    try:
        return cls(inverse, device=device, **options)
    except TypeError as err:
        raise VocoderError(f"vocoder {name!r} does not accept options {sorted(options)}: {err}") from None
