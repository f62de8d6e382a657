"""Robust wav inspection and loading shared by data preparation, features and the corpus generator.

Every way a file can be unusable maps to one :class:`AudioProblem` with a short machine-readable
``reason`` (written to the data-prep report) and a human sentence. Two levels of checking:

* :func:`inspect_wav` reads only the header (plus the RIFF chunk table, to catch files whose
  ``data`` chunk promises more bytes than the file holds, i.e. truncated copies: libsndfile
  silently reads what is there, so a truncated corpus would otherwise go unnoticed);
* :func:`load_wav` reads the samples and additionally rejects silent and non-finite signals
  (the ZeroSpeech reference divides by the peak, so a silent file would become NaN features).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

# Peak below which a float signal in [-1, 1] counts as silent. One LSB of 16-bit audio is
# 3.05e-5, so this only catches all-zero (or all-denormal) files, never quiet speech.
SILENCE_PEAK = 1e-6


class AudioProblem(SpeechsqError, ValueError):
    """A wav file cannot be used; ``reason`` is a short tag for reports (e.g. ``silent``)."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}: {detail}")


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _riff_data_shortfall(path: Path) -> int | None:
    """Bytes missing from a RIFF/WAVE file's ``data`` chunk (0 if complete, None if not RIFF).

    Walks the chunk list: each chunk is a 4-byte id, a little-endian uint32 size, the payload
    and a pad byte when the size is odd.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size == 0xFFFFFFFF:  # streamed wav of unknown length: nothing to check
                    return 0
                return max(0, pos + 8 + chunk_size - size)
            pos += 8 + chunk_size + (chunk_size & 1)
    return None  # no data chunk found: libsndfile will report it


def _check_header(path: Path, info, expected_sample_rate, require_mono, min_duration) -> AudioInfo:
    """Header checks shared by :func:`inspect_wav` and :func:`load_wav` (``info``: an open
    ``soundfile.SoundFile`` or ``soundfile.info`` result)."""
    shortfall = _riff_data_shortfall(path) if info.format in ("WAV", "WAVEX") else None
    if shortfall:
        raise AudioProblem(path, "truncated", f"data chunk is {shortfall} bytes longer than the file")
    if info.frames <= 0:
        raise AudioProblem(path, "empty", "no samples")
    if require_mono and info.channels != 1:
        raise AudioProblem(path, "stereo", f"{info.channels} channels, expected mono")
    if expected_sample_rate is not None and info.samplerate != expected_sample_rate:
        raise AudioProblem(
            path, "wrong-sample-rate", f"{info.samplerate} Hz, expected {expected_sample_rate} Hz"
        )
    result = AudioInfo(str(path), int(info.samplerate), int(info.channels), int(info.frames))
    if result.duration < min_duration:
        raise AudioProblem(path, "too-short", f"{result.duration:.3f} s < {min_duration:.3f} s")
    return result


def _open(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AudioProblem(path, "missing", "no such file")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioProblem(path, "not-audio", f"not a readable audio file ({err})") from None


def inspect_wav(
    path: str | Path,
    expected_sample_rate: int | None = None,
    require_mono: bool = True,
    min_duration: float = 0.0,
) -> AudioInfo:
    """Header-level checks; raises :class:`AudioProblem` with a reason tag.

    Reasons: ``missing``, ``not-audio``, ``truncated``, ``empty``, ``stereo``,
    ``wrong-sample-rate``, ``too-short``.
    """
    path = Path(path)
    with _open(path) as f:
        return _check_header(path, f, expected_sample_rate, require_mono, min_duration)


def check_signal(path: str | Path, wav: np.ndarray) -> None:
    """Content checks on loaded samples: finite and not silent."""
    if wav.size == 0:
        raise AudioProblem(path, "empty", "no samples")
    if not np.all(np.isfinite(wav)):
        raise AudioProblem(path, "non-finite", "samples contain NaN or inf")
    peak = float(np.max(np.abs(wav)))
    if peak < SILENCE_PEAK:
        raise AudioProblem(path, "silent", f"peak amplitude {peak:.3g} (peak normalisation would give NaN)")


def load_wav(
    path: str | Path,
    expected_sample_rate: int | None = None,
    require_mono: bool = True,
    dtype: str = "float32",
) -> tuple[np.ndarray, int]:
    """Read a mono wav as a 1-D float array in [-1, 1] after header and content checks."""
    path = Path(path)
    with _open(path) as f:  # one open: libsndfile's open is the costly part for short files
        info = _check_header(path, f, expected_sample_rate, require_mono, 0.0)
        try:
            wav = f.read(dtype=dtype, always_2d=False)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioProblem(path, "not-audio", f"cannot decode samples ({err})") from None
    if wav.ndim != 1:  # only reachable with require_mono=False
        wav = wav.mean(axis=1, dtype=dtype)
    if len(wav) < info.frames:
        raise AudioProblem(path, "truncated", f"read {len(wav)} of {info.frames} samples")
    check_signal(path, wav)
    return wav, info.sample_rate


@dataclass(frozen=True)
class Conversion:
    """What :func:`to_mono_at_rate` did to a signal (for the per-file notes and summaries)."""

    channels: int
    sample_rate: int
    target_rate: int

    @property
    def mixed_down(self) -> bool:
        return self.channels > 1

    @property
    def resampled(self) -> bool:
        return self.sample_rate != self.target_rate

    def describe(self) -> str:
        parts = []
        if self.mixed_down:
            parts.append(f"mixed {self.channels} channels down to mono")
        if self.resampled:
            parts.append(f"resampled {self.sample_rate} Hz -> {self.target_rate} Hz")
        return ", ".join(parts) or "unchanged"


def to_mono_at_rate(wav: np.ndarray, sample_rate: int, target_rate: int,
                    resample_type: str = "soxr_hq") -> tuple[np.ndarray, Conversion]:
    """A (samples,) or (samples, channels) float signal -> mono at ``target_rate``.

    Channels are averaged; resampling uses librosa (``soxr_hq`` by default, what the
    feature pipelines use). Returns the signal and what was done, so callers can log it.
    """
    wav = np.asarray(wav)
    if wav.ndim == 2:
        channels = wav.shape[1]
        wav = wav.mean(axis=1) if channels > 1 else wav[:, 0]
    elif wav.ndim == 1:
        channels = 1
    else:
        raise AudioProblem("<waveform>", "bad-shape", f"expected (samples,) or (samples, channels), got {wav.shape}")
    conversion = Conversion(channels, int(sample_rate), int(target_rate))
    if conversion.resampled:
        import librosa

        wav = librosa.resample(wav.astype(np.float32, copy=False), orig_sr=int(sample_rate),
                               target_sr=int(target_rate), res_type=resample_type)
    return wav, conversion
