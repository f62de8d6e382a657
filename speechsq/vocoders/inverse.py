"""Undoing a log-Mel pipeline: model features -> mel magnitudes -> linear magnitudes.

A pipeline of :mod:`speechsq.features.logmel` turns a waveform into features in steps that
are exactly invertible (a scale, an offset, dB, standardisation, pre-emphasis) and two that
lose information: the mel filterbank (80 bands from ~1000 FFT bins) and the phase. This
module inverts the exact steps exactly and the filterbank by non-negative least squares;
the phase is left to the vocoder (:mod:`speechsq.vocoders.griffin_lim`).

One :class:`FeatureInverse` per pipeline, registered under the pipeline's name:

``zerospeech19``  features = ``clip(20 log10 max(mel, amin), max - top_db) / top_db + 1`` of
                  the peak-normalised, pre-emphasised signal: the inverse multiplies by
                  ``top_db`` after removing the ``+ 1``, turns dB into magnitudes, and the
                  vocoder's waveform goes through the de-emphasis filter
                  ``y[n] = x[n] + a y[n-1]``, the exact inverse of ``x[n] - a x[n-1]``.
                  Values clipped at ``max - top_db`` stay at that floor (the clip is not
                  invertible).
``vctk``          features = ``(20 log10 max(mel, 1e-10) - mean) / std`` with the training
                  set's ``cmvn.npz``: the inverse is ``x * std + mean``, then dB -> magnitude.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.signal
import torch
from torch import Tensor

from speechsq.errors import SpeechsqError
from speechsq.registry import Registry


class VocoderError(SpeechsqError, ValueError):
    """A vocoder that cannot be built or used with these features (missing cmvn, mismatched analysis, ...)."""


def preemphasis(wav: np.ndarray, coefficient: float) -> np.ndarray:
    """``y[n] = x[n] - a x[n-1]`` with ``y[0] = x[0]`` (the ZeroSpeech pipeline's filter), float64."""
    return scipy.signal.lfilter([1.0, -coefficient], [1.0], np.asarray(wav, dtype=np.float64))


def deemphasis(wav: np.ndarray, coefficient: float) -> np.ndarray:
    """``y[n] = x[n] + a y[n-1]``: the exact inverse of :func:`preemphasis` (float64)."""
    return scipy.signal.lfilter([1.0], [1.0, -coefficient], np.asarray(wav, dtype=np.float64))


class MelToLinear:
    """Non-negative least squares ``min ||M S - mel||^2, S >= 0`` for every frame at once.

    ``M`` (n_mels, bins) is the pipeline's own filterbank (the same float32 numbers the
    features were computed with). The filterbank has ~12 times more columns than rows, so
    the plain pseudo-inverse is exact but goes negative between the filter centres; clipping
    it is a good start for FISTA (accelerated projected gradient), which converges to the
    non-negative solution (float64, step ``1 / ||M||^2``). It stops when every mel value is
    reproduced within ``tolerance_db`` or after ``max_iter`` iterations (decoder outputs need
    not be reachable by any spectrum: then the result approaches the least-squares fit). The
    defaults are for vocoding, where Griffin-Lim's phase error (~1 dB) dwarfs the residual
    after 30 iterations; pass a tighter tolerance to invert features exactly.
    """

    def __init__(self, mel_basis_t: np.ndarray, n_bins: int, tolerance_db: float = 0.01, max_iter: int = 30):
        basis = np.asarray(mel_basis_t, dtype=np.float64).T  # (n_mels, used bins)
        if basis.shape[1] > n_bins:
            raise ValueError(f"filterbank has {basis.shape[1]} bins, more than the spectrum's {n_bins}")
        self.basis = torch.from_numpy(basis)
        self.pinv = torch.from_numpy(np.linalg.pinv(basis))
        self.step = 1.0 / float(np.linalg.norm(basis, 2) ** 2)
        self.n_bins = int(n_bins)
        self.rel_tolerance = 10.0 ** (tolerance_db / 20.0) - 1.0
        self.max_iter = int(max_iter)
        self.iterations = 0  # of the last call, for tests and logs

    def __call__(self, mel: Tensor) -> Tensor:
        """mel: (n_mels, T) magnitudes > 0 -> (n_bins, T) linear magnitudes >= 0 (float64)."""
        m = self.basis.to(mel.device)
        target = mel.to(torch.float64)
        x = (self.pinv.to(mel.device) @ target).clamp_min(0.0)
        y, t = x, 1.0
        self.iterations = 0
        for it in range(1, self.max_iter + 1):
            x_next = (y - self.step * (m.T @ (m @ y - target))).clamp_min(0.0)
            t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
            y = x_next + ((t - 1.0) / t_next) * (x_next - x)
            x, t = x_next, t_next
            self.iterations = it
            if it % 10 == 0 and float(((m @ x - target).abs() / target).max()) <= self.rel_tolerance:
                break
        full = torch.zeros(self.n_bins, x.shape[1], dtype=x.dtype, device=x.device)
        full[: x.shape[0]] = x
        return full


class FeatureInverse(ABC):
    """Model features ``(n_mels, T)`` -> what the pipeline computed them from."""

    def __init__(self, pipeline, cmvn=None, nnls_tolerance_db: float = 0.01, nnls_max_iter: int = 30):
        self.pipeline = pipeline
        self.cmvn = cmvn
        self.n_mels = pipeline.n_mels
        self.sample_rate = pipeline.sample_rate
        self.hop_length = pipeline.hop_length
        self.n_fft = pipeline.stft.n_fft
        self.win_length = pipeline.stft.win_length
        self._nnls = (nnls_tolerance_db, nnls_max_iter)
        self._mel_to_linear: MelToLinear | None = None

    @property
    def mel_to_linear(self) -> MelToLinear:
        """Built on first use (its pseudo-inverse is the one costly part of an inverse)."""
        if self._mel_to_linear is None:
            self._mel_to_linear = MelToLinear(self.pipeline.mel_basis_t, self.n_fft // 2 + 1, *self._nnls)
        return self._mel_to_linear

    @abstractmethod
    def to_db(self, feats: Tensor) -> Tensor:
        """(n_mels, T) features -> ``20 log10`` of the mel magnitudes (dB)."""

    @abstractmethod
    def amplitude_floor(self) -> float:
        """The smallest mel magnitude the pipeline can produce (its log floor)."""

    def to_mel(self, feats: Tensor) -> Tensor:
        """(n_mels, T) features -> mel magnitudes (float64), never below the pipeline's floor."""
        db = self.to_db(feats.to(torch.float64))
        return torch.pow(10.0, db / 20.0).clamp_min(self.amplitude_floor())

    def to_linear(self, feats: Tensor) -> Tensor:
        """(n_mels, T) features -> (n_fft / 2 + 1, T) non-negative STFT magnitudes."""
        return self.mel_to_linear(self.to_mel(feats))

    def finish(self, wav: np.ndarray) -> np.ndarray:
        """Undo what the pipeline did to the waveform before its STFT (default: nothing)."""
        return np.asarray(wav, dtype=np.float64)

    def described_waveform(self, wav: np.ndarray) -> np.ndarray:
        """The waveform whose spectrum the features describe (before the pipeline's
        invertible pre-processing): what a resynthesis is compared with."""
        return np.asarray(wav, dtype=np.float64)

    def check_features(self, feats: Tensor) -> Tensor:
        if not torch.is_tensor(feats):
            feats = torch.as_tensor(np.asarray(feats))
        if feats.ndim != 2 or feats.shape[0] != self.n_mels:
            raise VocoderError(f"log-Mel must be (n_mels={self.n_mels}, frames) (channels first), got {tuple(feats.shape)}")
        if feats.shape[1] < 2:
            raise VocoderError(f"need at least 2 frames to make a waveform, got {feats.shape[1]}")
        if not bool(torch.isfinite(feats).all()):
            raise VocoderError("log-Mel contains NaN/Inf values")
        return feats


FEATURE_INVERSES: Registry[type[FeatureInverse]] = Registry("feature inverse")


def build_inverse(pipeline, cmvn=None, **nnls) -> FeatureInverse:
    """The inverse of ``pipeline`` (a :class:`~speechsq.features.LogMelPipeline`); ``nnls``:
    ``nnls_tolerance_db``, ``nnls_max_iter`` of its :class:`MelToLinear`."""
    name = str(pipeline.cfg["name"])
    try:
        cls = FEATURE_INVERSES.get(name)
    except KeyError as err:
        raise VocoderError(f"no inverse for the {name!r} features: {err.args[0]}") from None
    return cls(pipeline, cmvn, **nnls)


@FEATURE_INVERSES.register("zerospeech19")
class ZeroSpeechInverse(FeatureInverse):
    def __init__(self, pipeline, cmvn=None, **nnls):
        super().__init__(pipeline, cmvn, **nnls)
        self.top_db = float(pipeline.top_db)
        self.offset = 1.0 if pipeline.add_one else 0.0
        self.preemph = float(pipeline.preemph)
        self.peak = float(pipeline.peak)
        self.amin = float(pipeline.amin)

    def to_db(self, feats: Tensor) -> Tensor:
        return (feats - self.offset) * self.top_db

    def amplitude_floor(self) -> float:
        return self.amin

    def finish(self, wav: np.ndarray) -> np.ndarray:
        return deemphasis(wav, self.preemph)

    def described_waveform(self, wav: np.ndarray) -> np.ndarray:
        wav = np.asarray(wav, dtype=np.float64)
        return wav / np.abs(wav).max() * self.peak


@FEATURE_INVERSES.register("vctk")
class VctkInverse(FeatureInverse):
    def __init__(self, pipeline, cmvn=None, **nnls):
        super().__init__(pipeline, cmvn, **nnls)
        if pipeline.standardize and cmvn is None:
            raise VocoderError(
                "these features are standardised with training-set statistics: pass the cmvn.npz of the "
                "training features (feats/train/cmvn.npz) to invert them"
            )
        self.floor = float(pipeline.floor)

    def to_db(self, feats: Tensor) -> Tensor:
        if not self.pipeline.standardize:
            return feats
        std = torch.as_tensor(self.cmvn.std, dtype=feats.dtype, device=feats.device)[:, None]
        mean = torch.as_tensor(self.cmvn.mean, dtype=feats.dtype, device=feats.device)[:, None]
        return feats * std + mean

    def amplitude_floor(self) -> float:
        return self.floor
