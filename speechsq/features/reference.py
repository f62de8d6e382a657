"""The published preprocessing, written the way the reference scripts do it (one file at a time,
plain librosa calls). It is the yardstick for :mod:`speechsq.features.logmel`: the tests
compare against it and ``bench/features.py`` times it as the peer.

* ZeroSpeech 2019: bshall/ZeroSpeech ``preprocess.py`` (``process_wav``), with the
  keyword-only librosa >= 0.10 signatures and ``pad_mode="reflect"`` (the librosa < 0.10
  default the reference ran with).
* VCTK: kan-bayashi/ParallelWaveGAN ``logmelfilterbank`` after ``soundfile.read`` and
  ``librosa.resample``, in dB (20 log10) as SQ-VAE App. E.2.1 reports it.
"""

from __future__ import annotations

from collections.abc import Mapping

import librosa
import numpy as np
import scipy.signal
import soundfile as sf


def zerospeech_reference(path: str, cfg: Mapping) -> np.ndarray:
    wav, _ = librosa.load(path, sr=cfg["sample_rate"])
    wav = wav / np.abs(wav).max() * cfg["peak_normalize"]
    mel = librosa.feature.melspectrogram(
        y=scipy.signal.lfilter([1, -cfg["preemph"]], [1], wav),
        sr=cfg["sample_rate"], n_fft=cfg["n_fft"], n_mels=cfg["n_mels"], hop_length=cfg["hop_length"],
        win_length=cfg["win_length"], fmin=cfg["fmin"], fmax=cfg["fmax"], power=1, pad_mode="reflect",
    )
    logmel = librosa.amplitude_to_db(mel, top_db=cfg["top_db"])
    logmel = logmel / cfg["top_db"] + 1
    return logmel.T.astype(np.float32)


def vctk_reference(path: str, cfg: Mapping) -> np.ndarray:
    audio, fs = sf.read(path)
    if fs != cfg["sample_rate"]:
        audio = librosa.resample(audio, orig_sr=fs, target_sr=cfg["sample_rate"])
    x_stft = librosa.stft(audio, n_fft=cfg["n_fft"], hop_length=cfg["hop_length"],
                          win_length=cfg["win_length"], window="hann", pad_mode="reflect")
    spc = np.abs(x_stft).T
    mel_basis = librosa.filters.mel(sr=cfg["sample_rate"], n_fft=cfg["n_fft"], n_mels=cfg["n_mels"],
                                    fmin=cfg["fmin"], fmax=cfg["fmax"])
    mel = np.maximum(1e-10, np.dot(spc, mel_basis.T))
    return (20 * np.log10(mel)).astype(np.float32)


REFERENCES = {"zerospeech19": zerospeech_reference, "vctk": vctk_reference}
