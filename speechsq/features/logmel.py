"""The two log-Mel pipelines of SQ-VAE App. E.2.1, registered by name (the hydra ``preprocessing`` group).

Both compute the same numbers as the published preprocessing scripts (see
:mod:`speechsq.features.reference`, checked in ``tests/test_features.py``) but faster:

* the mel filterbank and the window are built once per pipeline, not once per file;
* only the ``win_length`` samples under the (zero-padded, centred) window are framed and
  transformed: a frame of ``n_fft`` samples whose only non-zero part is the window is a
  circular shift of the window part zero-padded at the end, and a circular shift changes the
  phase of a DFT, not its magnitude. So ``|rfft(window * x[t*hop-win/2 : t*hop+win/2], n_fft)|``
  equals librosa's centred ``|stft|`` exactly (up to rounding);
* only the FFT bins that carry mel weight (below ``fmax``) go through the filterbank product.

Features are ``(frames, n_mels)`` float32 (Kaldi orientation), ``frames = 1 + len(wav) // hop``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import scipy.fft
import scipy.signal
from omegaconf import DictConfig, OmegaConf

from speechsq.data_prep.audio import AudioProblem, Conversion, check_signal, read_audio
from speechsq.errors import SpeechsqError
from speechsq.registry import Registry

CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "preprocessing"


class FeatureError(SpeechsqError, ValueError):
    """The waveform cannot give valid features (too short for one window, ...)."""


class PreprocessingConfigError(SpeechsqError, FileNotFoundError):
    """No preprocessing config of that name or path."""


@dataclass(frozen=True)
class Featurized:
    """Features of one audio file and what was converted to compute them."""

    feats: np.ndarray  # (frames, n_mels) float32
    conversion: Conversion  # channels mixed down, sample rate resampled


def load_preprocessing_config(name_or_path: str, overrides: list[str] | None = None) -> DictConfig:
    """The ``preprocessing`` config by group name (``zerospeech19``, ``vctk``) or yaml path, with
    optional dotlist overrides (``["n_mels=40"]``)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
        raise PreprocessingConfigError(f"no preprocessing config {name_or_path!r} (known: {known}, or a .yaml path)")
    cfg = OmegaConf.load(path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return cfg


class StftMagnitude:
    """``|STFT|`` with librosa's conventions (centred frames, padded Hann window), computed
    on the window support only (see module docstring)."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int, pad_mode: str, max_bin: int | None = None):
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
        self.n_fft, self.win_length, self.hop_length, self.pad_mode = n_fft, win_length, hop_length, pad_mode
        self.window = scipy.signal.get_window("hann", win_length, fftbins=True).astype(np.float32)
        # librosa centres the window inside the n_fft frame (util.pad_center), and centres the
        # frame on t * hop: the window covers x[t*hop - left : t*hop - left + win_length].
        self.left = n_fft // 2 - (n_fft - win_length) // 2
        self.max_bin = n_fft // 2 + 1 if max_bin is None else max_bin

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: 1-D float signal -> (frames, max_bin) float32 magnitudes."""
        right = self.win_length - self.left
        if self.pad_mode == "reflect" and len(x) <= max(self.left, right):
            raise FeatureError(f"signal of {len(x)} samples is too short for reflect padding of {self.left}")
        padded = np.pad(x.astype(np.float32, copy=False), (self.left, right), mode=self.pad_mode)
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.win_length)[:: self.hop_length]
        frames = frames[: self.num_frames(len(x))]
        # window straight into a zero-padded buffer (saves scipy's own padding copy)
        buffer = np.zeros((len(frames), self.n_fft), dtype=np.float32)
        np.multiply(frames, self.window, out=buffer[:, : self.win_length])
        spectrum = scipy.fft.rfft(buffer, axis=-1, workers=1, overwrite_x=True)[:, : self.max_bin]
        return np.abs(spectrum)


class LogMelPipeline(ABC):
    """A waveform -> log-Mel recipe, built from a ``preprocessing`` config node.

    ``corpus_rates``: sample rates of the corpus the recipe was published for, which it
    resamples by design (VCTK's 48 kHz for the 24 kHz pipeline). Audio at ``sample_rate`` or
    at one of these is converted without a note; any other rate is resampled with one (or
    refused with ``--strict-sample-rate``).
    """

    name: str
    standardize: bool = False
    corpus_rates: tuple[int, ...] = ()

    def __init__(self, cfg: Mapping[str, Any] | DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        self.cfg = cfg
        self.sample_rate = int(cfg["sample_rate"])
        self.hop_length = int(cfg["hop_length"])
        self.n_mels = int(cfg["n_mels"])
        self.resample_type = cfg.get("resample_type", "soxr_hq")
        self.standardize = bool(cfg.get("standardize", False))
        mel_basis = librosa.filters.mel(
            sr=self.sample_rate, n_fft=int(cfg["n_fft"]), n_mels=self.n_mels,
            fmin=float(cfg["fmin"]), fmax=float(cfg["fmax"]),
        )  # float32, Slaney-normalised, as librosa.feature.melspectrogram uses
        used_bins = np.flatnonzero(mel_basis.any(axis=0))
        max_bin = int(used_bins[-1]) + 1 if len(used_bins) else mel_basis.shape[1]
        self.mel_basis_t = np.ascontiguousarray(mel_basis[:, :max_bin].T)  # (bins, n_mels)
        self.stft = StftMagnitude(int(cfg["n_fft"]), int(cfg["win_length"]), self.hop_length,
                                  cfg.get("pad_mode", "reflect"), max_bin)

    @property
    def frame_shift(self) -> float:
        return self.hop_length / self.sample_rate

    @property
    def expected_rates(self) -> frozenset[int]:
        """Input rates converted without a note (see the class docstring)."""
        return frozenset((self.sample_rate, *self.corpus_rates))

    def load(self, path: str | Path) -> np.ndarray:
        """Read and check (not silent, finite) any audio file, mono at the pipeline rate."""
        return read_audio(path, self.sample_rate, self.resample_type).wav

    def featurize(self, path: str | Path) -> Featurized:
        """Features of an audio file and what was converted (channels, rate) to get them."""
        audio = read_audio(path, self.sample_rate, self.resample_type)
        return Featurized(self.from_waveform(audio.wav), audio.conversion)

    def mel(self, wav: np.ndarray) -> np.ndarray:
        """(frames, n_mels) mel magnitudes of a float waveform at the pipeline rate."""
        return self.stft(wav) @ self.mel_basis_t

    @abstractmethod
    def from_waveform(self, wav: np.ndarray) -> np.ndarray:
        """(frames, n_mels) float32 log-Mel features of a waveform at ``sample_rate``."""

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.featurize(path).feats


PIPELINES: Registry[type[LogMelPipeline]] = Registry("preprocessing pipeline")


def build_pipeline(cfg: Mapping[str, Any] | DictConfig | str) -> LogMelPipeline:
    """A pipeline from a ``preprocessing`` config node (its ``name`` picks the class) or a name."""
    if isinstance(cfg, str):
        cfg = load_preprocessing_config(cfg)
    return PIPELINES.get(cfg["name"])(cfg)


@PIPELINES.register("zerospeech19")
class ZeroSpeechLogMel(LogMelPipeline):
    """van Niekerk et al. (2020), bshall/ZeroSpeech ``preprocess.py``:

    peak -> 0.999, pre-emphasis, |STFT|, mel, ``librosa.amplitude_to_db`` (20 log10 with
    amin 1e-5, ref 1), clip ``top_db`` below the utterance maximum, ``/ top_db``, and ``+ 1``:
    the paper (SQ-VAE App. E.2.1) lists only the division, but the reference code also adds 1,
    mapping [-1, 0] to [0, 1]; ``add_one`` reproduces it. ``pad_mode: reflect`` is what
    librosa < 0.10 (used by the reference) did by default.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.peak = float(self.cfg["peak_normalize"])
        self.preemph = float(self.cfg["preemph"])
        self.top_db = float(self.cfg["top_db"])
        self.add_one = bool(self.cfg.get("add_one", True))
        self.amin = float(self.cfg.get("amin", 1e-5))

    def from_waveform(self, wav: np.ndarray) -> np.ndarray:
        check_signal("<waveform>", wav)  # a silent signal would divide by zero
        wav = wav / np.abs(wav).max() * self.peak
        # y[n] = x[n] - a x[n-1] (scipy.signal.lfilter([1, -a], [1], x) of the reference)
        emphasised = np.empty(len(wav), dtype=np.float64)
        emphasised[0] = wav[0]
        emphasised[1:] = wav[1:] - self.preemph * wav[:-1].astype(np.float64)
        db = 20.0 * np.log10(np.maximum(self.amin, self.mel(emphasised)))
        db = np.maximum(db, db.max() - self.top_db)
        logmel = db / self.top_db + (1.0 if self.add_one else 0.0)
        return logmel.astype(np.float32)


@PIPELINES.register("vctk")
class VctkLogMel(LogMelPipeline):
    """kan-bayashi/ParallelWaveGAN ``logmelfilterbank`` as SQ-VAE App. E.2.1 describes it:
    resample to 24 kHz, |STFT| (reflect padding), mel 80-7600 Hz, and dB with a -200 dB floor,
    ``20 log10(max(mel, 1e-10))`` (ParallelWaveGAN itself stores log10; the paper reports dB).
    Standardisation with training-set statistics happens in :mod:`speechsq.features.compute`.
    """

    corpus_rates = (48000,)  # VCTK 0.80 is recorded at 48 kHz and resampled by the recipe

    def __init__(self, cfg):
        super().__init__(cfg)
        self.floor = 10.0 ** (float(self.cfg["floor_db"]) / 20.0)

    def from_waveform(self, wav: np.ndarray) -> np.ndarray:
        check_signal("<waveform>", wav)
        return (20.0 * np.log10(np.maximum(self.floor, self.mel(wav)))).astype(np.float32)


__all__ = [
    "AudioProblem", "FeatureError", "Featurized", "LogMelPipeline", "PreprocessingConfigError", "PIPELINES", "StftMagnitude", "VctkLogMel",
    "ZeroSpeechLogMel", "build_pipeline", "load_preprocessing_config",
]
