"""Vocoders: the model's log-Mel back to a waveform.

>>> from speechsq.vocoders import build_vocoder
>>> vocoder = build_vocoder("griffin_lim", "zerospeech19")   # or cfg.preprocessing (+ cmvn)
>>> vocoder.sample_rate
16000

``griffin_lim`` (default, offline, no training) and ``parallel_wavegan`` (a user-trained
Parallel WaveGAN / HiFi-GAN / MelGAN checkpoint of kan-bayashi/ParallelWaveGAN, the
``vocoder`` extra) are registered in :data:`VOCODERS`.
"""

from speechsq.vocoders.base import VOCODERS, Vocoder, build_vocoder
from speechsq.vocoders.inverse import (
    FEATURE_INVERSES,
    FeatureInverse,
    MelToLinear,
    VocoderError,
    build_inverse,
    deemphasis,
    preemphasis,
)
from speechsq.vocoders import griffin_lim as _griffin_lim  # noqa: F401  (registers "griffin_lim")
from speechsq.vocoders import parallel_wavegan as _parallel_wavegan  # noqa: F401  (registers "parallel_wavegan")

__all__ = [
    "FEATURE_INVERSES", "FeatureInverse", "MelToLinear", "VOCODERS", "Vocoder", "VocoderError",
    "build_inverse", "build_vocoder", "deemphasis", "preemphasis",
]
