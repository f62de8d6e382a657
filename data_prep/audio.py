"""Robust wav inspection and loading shared by data preparation, features and the corpus generator.

Every way a file can be unusable maps to one :class:`AudioProblem` with a short machine-readable
``reason`` (written to the data-prep report) and a human sentence. Two levels of checking:

* :func:`inspect_wav` reads only the header (plus the RIFF chunk table, to catch files whose
  ``data`` chunk promises more bytes than the file holds, i.e. truncated copies: libsndfile
  silently reads what is there, so a truncated corpus would otherwise go unnoticed);
* :func:`load_wav` reads the samples and additionally rejects silent and non-finite signals
  (the ZeroSpeech reference divides by the peak, so a silent file would become NaN features).

Silence is defined on the 16-bit integer scale, where a recording's noise floor lives: a
signal is **silent** when its RMS is at most :data:`SILENT_RMS_LSB` = 8 LSB of 16-bit audio
(8 / 32768, -72.2 dBFS). That catches digital zero, a file of +-1 LSB dither (what a
"silent" wav from a DAW or a resampler holds) and anything else at the 16-bit noise floor,
which peak normalisation would otherwise blow up into full-scale noise; quiet speech is far
above it (speech peaking at -50 dBFS still has an RMS around 25 LSB). The RMS never exceeds
the peak, so a peak of 8 LSB or less is always silent.

Input of any format and layout (for ``extract --wav`` and ``resynthesize``):
:func:`discover_audio` finds the audio files of a file or folder (every format libsndfile
reads, extensions in any case, duplicate utterance ids refused), :func:`read_audio` loads one
as mono at a target rate and says what it converted (:class:`Conversion`), and
:class:`AudioSummary` counts the conversions for logs and reports.
"""

from __future__ import annotations

import logging
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

# One least significant bit of 16-bit audio on the float scale [-1, 1).
LSB_16BIT = 1.0 / 32768.0
# A signal whose RMS is at most this many 16-bit LSBs is silent (-72.2 dBFS; module docstring).
SILENT_RMS_LSB = 8


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
        raise AudioProblem(path, "too-short", f"{result.duration:.4f} s < {min_duration:.4f} s")
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


def rms_lsb(wav: np.ndarray) -> float:
    """Root mean square of a float signal in units of one 16-bit LSB (float64 accumulation)."""
    wav = np.asarray(wav, dtype=np.float64)
    return float(np.sqrt(np.mean(np.square(wav)))) / LSB_16BIT


def check_signal(path: str | Path, wav: np.ndarray) -> None:
    """Content checks on loaded samples: finite and not silent (RMS <= :data:`SILENT_RMS_LSB`)."""
    if wav.size == 0:
        raise AudioProblem(path, "empty", "no samples")
    if not np.all(np.isfinite(wav)):
        raise AudioProblem(path, "non-finite", "samples contain NaN or inf")
    rms = rms_lsb(wav)
    if rms <= SILENT_RMS_LSB:
        peak = float(np.max(np.abs(wav))) / LSB_16BIT
        raise AudioProblem(
            path, "silent",
            f"RMS {rms:.2f} LSB, peak {peak:.0f} LSB of 16-bit audio (silence: RMS <= {SILENT_RMS_LSB} LSB, "
            "-72.2 dBFS); peak normalisation would turn it into loud noise",
        )


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


# ------------------------------------------------------------------------ any audio input
class AudioInputError(SpeechsqError, ValueError):
    """A file or folder given as audio input cannot be used as a whole (missing, no audio
    files, two files that would give the same utterance id)."""


# libsndfile format -> file extensions (lower case, no dot). ``.mat`` and ``.htk`` are left
# out: in speech folders they are almost always features or matrices, not audio. A file given
# by name is read whatever its extension.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "WAV": ("wav", "wave"), "WAVEX": ("wav",), "RF64": ("rf64",), "W64": ("w64",), "FLAC": ("flac",),
    "OGG": ("ogg", "oga", "opus"), "MP3": ("mp3",), "AIFF": ("aiff", "aif", "aifc"), "AU": ("au", "snd"),
    "CAF": ("caf",), "NIST": ("sph", "nist"), "IRCAM": ("sf",), "VOC": ("voc",), "SD2": ("sd2",),
    "PAF": ("paf",), "PVF": ("pvf",), "XI": ("xi",), "AVR": ("avr",), "WVE": ("wve",), "MPC2K": ("mpc",),
    "SVX": ("svx", "8svx", "iff"), "SDS": ("sds",),
}


def audio_extensions() -> frozenset[str]:
    """Extensions (lower case, with the dot) of every format the installed libsndfile reads."""
    available = sf.available_formats()
    return frozenset(f".{ext}" for fmt, exts in FORMAT_EXTENSIONS.items() if fmt in available for ext in exts)


def utterance_id(path: Path) -> str:
    """The utterance id of an audio file: its stem, whitespace runs replaced by ``_`` (ids are
    the first field of space-separated tables such as ``units.txt``)."""
    return re.sub(r"\s+", "_", path.stem.strip()) or "_"


def discover_audio(path: str | Path) -> dict[str, Path]:
    """``utt -> file`` for one audio file or every audio file under a folder (recursively).

    Folders: files whose extension (any case: ``.WAV`` too) is one libsndfile reads
    (:func:`audio_extensions`); hidden files (``.name``, e.g. macOS ``._x.wav``) are ignored.
    A single file is taken whatever its extension. Two files with the same utterance id (the
    same stem in different subfolders) are an :class:`AudioInputError` naming both, since
    they would silently become one utterance. Sorted by utterance id.
    """
    path = Path(path)
    if path.is_file():
        return {utterance_id(path): path}
    if not path.exists():
        raise AudioInputError(f"{path} does not exist (give an audio file or a folder of audio files)")
    extensions = audio_extensions()
    found: dict[str, Path] = {}
    for candidate in sorted(path.rglob("*")):
        if candidate.name.startswith(".") or candidate.suffix.lower() not in extensions or not candidate.is_file():
            continue
        utt = utterance_id(candidate)
        if utt in found:
            raise AudioInputError(
                f"{found[utt]} and {candidate} would both be utterance {utt!r}; rename one of them "
                "(utterance ids are file names without extension, whatever the subfolder)"
            )
        found[utt] = candidate
    if not found:
        shown = ", ".join(sorted(extensions)[:8])
        raise AudioInputError(f"no audio files under {path} (looked for {shown}, ... in any case)")
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class LoadedAudio:
    """A file read by :func:`read_audio`: mono float32 samples at the target rate, and what
    was converted to get there."""

    path: str
    wav: np.ndarray
    conversion: Conversion


def read_audio(path: str | Path, target_rate: int, resample_type: str = "soxr_hq") -> LoadedAudio:
    """Read any libsndfile format as mono at ``target_rate``; unusable files raise
    :class:`AudioProblem` (``missing``, ``not-audio``, ``truncated``, ``empty``, ``silent``,
    ``non-finite``). Several channels are averaged and other rates resampled; the returned
    :class:`Conversion` says so (log it: nothing is converted silently). Silence is judged
    on the mono mix at the original rate, before resampling."""
    path = Path(path)
    with _open(path) as f:
        info = _check_header(path, f, None, False, 0.0)
        try:
            frames = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioProblem(path, "not-audio", f"cannot decode samples ({err})") from None
    if len(frames) < info.frames:
        raise AudioProblem(path, "truncated", f"read {len(frames)} of {info.frames} samples")
    mono, _ = to_mono_at_rate(frames, info.sample_rate, info.sample_rate)
    check_signal(path, mono)
    wav, _ = to_mono_at_rate(mono, info.sample_rate, target_rate, resample_type)
    conversion = Conversion(info.channels, info.sample_rate, int(target_rate))
    return LoadedAudio(str(path), np.asarray(wav, dtype=np.float32), conversion)


def header_sample_rates(files: dict[str, Path]) -> dict[str, int]:
    """``utt -> sample rate`` from the headers (files libsndfile cannot open are left out:
    reading them later reports them with a reason)."""
    rates = {}
    for utt, path in files.items():
        try:
            rates[utt] = int(sf.info(str(path)).samplerate)
        except (sf.LibsndfileError, RuntimeError, TypeError, OSError):
            continue
    return rates


def refuse_other_rates(files: dict[str, Path], expected_rates: set[int] | frozenset[int], what: str) -> None:
    """``--strict-sample-rate``: fail (before any work) when a file is not at an expected rate,
    with counts by rate and an example file."""
    from speechsq.errors import MismatchError

    rates = header_sample_rates(files)
    other = {utt: rate for utt, rate in rates.items() if rate not in expected_rates}
    if other:
        by_rate = Counter(other.values())
        example = files[sorted(other)[0]]
        counts = ", ".join(f"{rate} Hz: {n}" for rate, n in sorted(by_rate.items()))
        expected = " or ".join(f"{rate} Hz" for rate in sorted(expected_rates))
        raise MismatchError(
            f"{what}: {len(other)} of {len(files)} files are not at {expected} ({counts}; e.g. {example}); "
            "resample them, or drop --strict-sample-rate to have them resampled and listed"
        )


@dataclass
class AudioSummary:
    """Counts of what :func:`read_audio` converted over many files (logs and report files).

    ``expected_rates``: rates the pipeline takes as they are or resamples by design (the
    corpus's own rate, e.g. VCTK's 48 kHz for the 24 kHz pipeline); a file at any other rate
    is resampled *with a note*, and so is every file mixed down from several channels.
    """

    target_rate: int
    expected_rates: tuple[int, ...]
    by_sample_rate: Counter = field(default_factory=Counter)
    by_channels: Counter = field(default_factory=Counter)
    notes: dict[str, str] = field(default_factory=dict)  # utt -> what was done (noteworthy files only)

    def add(self, utt: str, conversion: Conversion) -> str | None:
        """Count one file; returns the note to log for it (None when nothing noteworthy)."""
        self.by_sample_rate[conversion.sample_rate] += 1
        self.by_channels[conversion.channels] += 1
        unexpected_rate = conversion.resampled and conversion.sample_rate not in self.expected_rates
        if not (unexpected_rate or conversion.mixed_down):
            return None
        self.notes[utt] = conversion.describe()
        return self.notes[utt]

    @property
    def resampled_unexpected(self) -> int:
        return sum(n for rate, n in self.by_sample_rate.items() if rate not in self.expected_rates)

    @property
    def mixed_down(self) -> int:
        return sum(n for channels, n in self.by_channels.items() if channels > 1)

    def describe(self) -> str:
        """One line for the command's summary."""
        total = sum(self.by_sample_rate.values())
        rates = ", ".join(f"{rate} Hz: {n}" for rate, n in sorted(self.by_sample_rate.items()))
        line = f"{total} audio files by sample rate ({rates})"
        if self.resampled_unexpected:
            line += f"; {self.resampled_unexpected} resampled to {self.target_rate} Hz from a rate this pipeline does not expect"
        if self.mixed_down:
            line += f"; {self.mixed_down} mixed down to mono"
        return line

    def to_dict(self) -> dict:
        return {
            "target_rate": self.target_rate,
            "expected_rates": list(self.expected_rates),
            "by_sample_rate": {str(rate): n for rate, n in sorted(self.by_sample_rate.items())},
            "by_channels": {str(ch): n for ch, n in sorted(self.by_channels.items())},
            "resampled_unexpected_rate": self.resampled_unexpected,
            "mixed_down": self.mixed_down,
            "notes": dict(sorted(self.notes.items())),
        }
