"""Units in, speech out: the public Python API of speechsq.

Load a trained model once, then go from a waveform to units and back to speech::

    import soundfile as sf, speechsq
    codec = speechsq.load("recipes/zerospeech19/exp/mini/sq_gauss1/seed1/checkpoints/last.pt")
    wav, sr = sf.read("recipes/zerospeech19/corpus/embedded/test/S101_0154622531.wav")   # any rate, any channel count
    enc = codec.encode(wav, sr)                                       # units, durations, frame_units, ...
    sf.write("V001.wav", codec.vocode(codec.decode(enc.units, "V001", enc.durations)), codec.sample_rate)

(``README_EXAMPLE`` holds these lines; the tests run them.) Names, chosen not to clash with
textlesslib, where ``dense`` means continuous features:

``units``        deduplicated code indices (runs of the same code collapsed), int64
``durations``    run lengths of ``units`` in latent frames, ``sum(durations) == len(frame_units)``
``frame_units``  the code index of every latent frame (one per ``frame_shift`` seconds)
``latents``      the encoder output before quantisation (``z_e`` in the model), float32
``quantized``    the quantised codes the decoder reads (``z_q``), float32

``decode`` gives the log-Mel spectrogram ``(n_mels, frames)`` in the units of the training
features; ``vocode`` turns it into a waveform (Griffin-Lim by default, offline; a
user-trained Parallel WaveGAN / HiFi-GAN with ``vocoder="parallel_wavegan"``, see
:mod:`speechsq.vocoders`). Exact round trips: ``decode(codec.encode(wav, sr), speaker)``
equals ``model.reconstruct`` of the same features, and ``decode(units, speaker, durations)``
equals ``decode(frame_units, speaker)`` (the run-length encoding is lossless).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

README_EXAMPLE = """\
import soundfile as sf, speechsq
codec = speechsq.load("recipes/zerospeech19/exp/mini/sq_gauss1/seed1/checkpoints/last.pt")
wav, sr = sf.read("recipes/zerospeech19/corpus/embedded/test/S101_0154622531.wav")   # any rate, any channel count
enc = codec.encode(wav, sr)                                       # units, durations, frame_units, ...
sf.write("V001.wav", codec.vocode(codec.decode(enc.units, "V001", enc.durations)), codec.sample_rate)
"""

DOWNSAMPLING = 2  # latent frames per feature frame pair (the encoder's stride-2 convolution)


class UnitsError(SpeechsqError, ValueError):
    """Units, durations, speakers or waveforms that the model cannot use."""


@dataclass(frozen=True)
class Encoding:
    """What :meth:`UnitCodec.encode` returns (all tensors on the CPU).

    ``frame_units`` is ``(T',)``, or ``(T', G)`` for quantizers with ``G`` codes per frame
    (``depthwise``); ``units``/``durations`` are its run-length encoding over frames.
    """

    units: Tensor  # (N,) / (N, G) int64
    durations: Tensor  # (N,) int64, sum == T'
    frame_units: Tensor  # (T',) / (T', G) int64
    latents: Tensor  # (T', input_dim) float32, encoder output z_e
    quantized: Tensor  # (T', code_dim) float32, quantised codes z_q
    num_frames: int  # feature frames of the input (decode of this encoding gives exactly these)
    frame_shift: float  # seconds per latent frame
    conversion: str = "unchanged"  # what was done to the input waveform

    def __len__(self) -> int:
        return int(self.frame_units.shape[0])


def run_length_encode(frame_units: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Collapse runs over the first axis: ``[3, 3, 5, 3] -> units [3, 5, 3], durations [2, 1, 1]``
    (rows of a ``(T', G)`` array count as equal when all their codes are)."""
    codes = (frame_units if torch.is_tensor(frame_units) else torch.from_numpy(np.array(frame_units))).long().cpu()
    if codes.ndim not in (1, 2):
        raise UnitsError(f"frame units must be (frames,) or (frames, groups), got shape {tuple(codes.shape)}")
    if codes.shape[0] == 0:
        return codes, torch.zeros(0, dtype=torch.long)
    flat = codes.reshape(codes.shape[0], -1)
    change = (flat[1:] != flat[:-1]).any(dim=1)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(change).reshape(-1) + 1])
    ends = torch.cat([starts[1:], torch.tensor([codes.shape[0]])])
    return codes[starts], ends - starts


def expand_units(units: Tensor | np.ndarray, durations: Tensor | np.ndarray) -> Tensor:
    """The inverse of :func:`run_length_encode`: every unit repeated ``duration`` times."""
    units = (units if torch.is_tensor(units) else torch.from_numpy(np.array(units))).long().cpu()
    durations = (durations if torch.is_tensor(durations) else torch.from_numpy(np.array(durations))).cpu()
    if durations.ndim != 1 or units.ndim not in (1, 2) or units.shape[0] != durations.shape[0]:
        raise UnitsError(f"need one duration per unit: units {tuple(units.shape)}, durations {tuple(durations.shape)}")
    if durations.dtype.is_floating_point and not bool((durations == durations.round()).all()):
        raise UnitsError("durations must be whole numbers of latent frames")
    durations = durations.long()
    if bool((durations < 1).any()):
        raise UnitsError(f"durations must be >= 1 latent frame, got {sorted(set(durations[durations < 1].tolist()))}")
    return torch.repeat_interleave(units, durations, dim=0)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def find_cmvn(checkpoint: str | Path | None, cfg) -> Path | None:
    """``cmvn.npz`` of standardised training features: next to the checkpoint (an exported
    model directory), else ``<data.feats_dir>/cmvn.npz`` of its config."""
    candidates = []
    if checkpoint is not None:
        path = Path(checkpoint)
        candidates.append((path if path.is_dir() else path.parent) / "cmvn.npz")
    feats_dir = (cfg.get("data") or {}).get("feats_dir") if hasattr(cfg, "get") else None
    if feats_dir:
        candidates.append(Path(str(feats_dir)) / "cmvn.npz")
    return next((c for c in candidates if c.is_file()), None)


def _as_waveform(waveform: Any) -> np.ndarray:
    wav = waveform.detach().cpu().numpy() if torch.is_tensor(waveform) else np.asarray(waveform)
    wav = np.squeeze(wav)
    if wav.ndim == 2 and wav.shape[0] < wav.shape[1]:  # (channels, samples), the torch convention
        wav = wav.T
    if wav.ndim not in (1, 2) or wav.shape[0] == 0:
        raise UnitsError(f"expected a waveform of shape (samples,) or (samples, channels), got {np.shape(waveform)}")
    if not np.issubdtype(wav.dtype, np.floating):
        raise UnitsError(f"expected float samples in [-1, 1], got dtype {wav.dtype} (soundfile.read gives floats)")
    return wav.astype(np.float64, copy=False)


class UnitCodec:
    """A trained speech model with its feature pipeline and a vocoder.

    model: a :class:`~speechsq.models.speech.SpeechVQVAE`; cfg: its resolved config (the
    checkpoint's); cmvn: the training-set :class:`~speechsq.features.Cmvn` for standardised
    pipelines (VCTK); vocoder: a registered name or a :class:`~speechsq.vocoders.Vocoder`.
    """

    def __init__(self, model, cfg, device: str | torch.device = "cpu", cmvn=None,
                 vocoder: Any = "griffin_lim", vocoder_options: dict | None = None):
        from speechsq.features import build_pipeline
        from speechsq.models.speech import SpeechVQVAE

        if not isinstance(model, SpeechVQVAE):
            raise UnitsError(f"speechsq.load works with speech models; this checkpoint holds a {type(model).__name__}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.pipeline = build_pipeline(cfg["preprocessing"])
        self.cmvn = cmvn
        self._vocoder = vocoder
        self._vocoder_options = dict(vocoder_options or {})

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str | torch.device = "cpu", cmvn: Any = None,
                        vocoder: Any = "griffin_lim", vocoder_options: dict | None = None) -> "UnitCodec":
        """Load ``checkpoint`` (``speechsq train``'s ``last.pt`` or an exported model dir)."""
        from speechsq.features import Cmvn
        from speechsq.training import load_model

        device = resolve_device(device)
        model, cfg = load_model(checkpoint, device=device)
        if cmvn is None or isinstance(cmvn, (str, Path)):
            path = Path(cmvn) if cmvn is not None else find_cmvn(checkpoint, cfg)
            cmvn = Cmvn.load(path) if path is not None else None
        return cls(model, cfg, device, cmvn, vocoder, vocoder_options)

    # ----- what the model is ----------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """Sample rate of the features (input is resampled to it) and of vocoded waveforms."""
        return self.pipeline.sample_rate

    expected_sample_rate = sample_rate  # textlesslib's name

    @property
    def frame_shift(self) -> float:
        """Seconds per latent frame (per entry of ``frame_units``)."""
        return self.pipeline.frame_shift * DOWNSAMPLING

    @property
    def code_hop_size(self) -> int:
        """Waveform samples per latent frame (textlesslib's name)."""
        return self.pipeline.hop_length * DOWNSAMPLING

    @property
    def num_codes(self) -> int:
        return int(self.model.quantizer.num_codes)

    vocab_size = num_codes  # textlesslib's name

    @property
    def speakers(self) -> list[str]:
        """The training speakers, the voices :meth:`decode` can speak in."""
        if self.model.speakers is not None:
            return list(self.model.speakers)
        return [str(i) for i in range(self.model.n_speakers)]

    def speaker_id(self, speaker: str | int) -> int:
        if isinstance(speaker, (int, np.integer)) and not isinstance(speaker, bool):
            if not 0 <= int(speaker) < self.model.n_speakers:
                raise UnitsError(f"speaker id {speaker} is not in [0, {self.model.n_speakers})")
            return int(speaker)
        if str(speaker) not in self.speakers:
            raise UnitsError(f"unknown speaker {speaker!r}; the model knows: {', '.join(self.speakers)}")
        return self.speakers.index(str(speaker))

    # ----- waveform -> units ----------------------------------------------------------------
    def features(self, waveform: Any, sample_rate: int) -> tuple[Tensor, str]:
        """Waveform (any rate; mono, ``(samples, channels)`` or ``(channels, samples)``) ->
        ``(n_mels, frames)`` model features and a note of what was done to the signal."""
        from speechsq.data_prep.audio import to_mono_at_rate

        if int(sample_rate) != sample_rate or int(sample_rate) <= 0:
            raise UnitsError(f"sample_rate must be a positive integer, got {sample_rate}")
        wav, conversion = to_mono_at_rate(_as_waveform(waveform), int(sample_rate), self.sample_rate,
                                          self.pipeline.resample_type)
        note = conversion.describe()
        if note != "unchanged":
            log.info("input waveform %s", note)
        feats = self.pipeline.from_waveform(np.asarray(wav, dtype=np.float64))
        if self.pipeline.standardize:
            if self.cmvn is None:
                raise UnitsError("this model's features are standardised: pass cmvn='feats/train/cmvn.npz' to speechsq.load")
            feats = self.cmvn.apply(feats)
        return torch.from_numpy(np.ascontiguousarray(feats.T, dtype=np.float32)), note

    def encode(self, waveform: Any, sample_rate: int) -> Encoding:
        """Waveform -> :class:`Encoding` (resampled and mixed down as needed, with a log line)."""
        feats, note = self.features(waveform, sample_rate)
        return self.encode_features(feats, conversion=note)

    def encode_features(self, log_mel: Tensor | np.ndarray, conversion: str = "unchanged") -> Encoding:
        """``(n_mels, frames)`` model features (e.g. ``FeatureReader(d)[utt].T``) -> :class:`Encoding`."""
        feats = log_mel.float() if torch.is_tensor(log_mel) else torch.from_numpy(np.array(log_mel, dtype=np.float32))
        if feats.ndim != 2 or feats.shape[0] != self.model.n_mels:
            raise UnitsError(f"log-Mel must be (n_mels={self.model.n_mels}, frames), got {tuple(feats.shape)}")
        enc = self.model.encode(feats[None].to(self.device))
        n = int(enc["lengths"][0])
        frame_units = enc["indices"][0, :n].long().cpu()
        units, durations = run_length_encode(frame_units)
        return Encoding(
            units=units, durations=durations, frame_units=frame_units,
            latents=enc["z_e"][0, :n].float().cpu(), quantized=enc["z_q"][0, :n].float().cpu(),
            num_frames=int(feats.shape[1]), frame_shift=self.frame_shift, conversion=conversion,
        )

    # ----- units -> log-Mel -> waveform -----------------------------------------------------
    def decode(self, units: Encoding | Tensor | np.ndarray | list, speaker: str | int,
               durations: Tensor | np.ndarray | list | None = None) -> Tensor:
        """Units in ``speaker``'s voice -> ``(n_mels, frames)`` log-Mel (model feature units, CPU).

        ``units``: an :class:`Encoding` (its quantised codes are decoded as they are, so the
        result equals ``model.reconstruct`` of the encoded features, ``num_frames`` frames), or
        code indices: deduplicated ``units`` with their ``durations``, or per-frame
        ``frame_units`` when ``durations`` is None (``2 * len(frame_units)`` frames out).
        """
        spk = torch.tensor([self.speaker_id(speaker)], device=self.device)
        if isinstance(units, Encoding):
            if durations is not None:
                raise UnitsError("an Encoding carries its own durations; pass durations only with plain units")
            out = self.model.decode(units.quantized[None].to(self.device), spk)
            return out[0, :, : units.num_frames].float().cpu()
        if torch.is_tensor(units):
            codes = units
        else:
            array = np.asarray(units)
            codes = torch.as_tensor(array if array.size else array.astype(np.int64))  # [] parses as float
        if codes.dtype.is_floating_point:
            raise UnitsError("units must be integer code indices")
        frame_units = expand_units(codes, durations) if durations is not None else codes.long().cpu()
        if frame_units.shape[0] < 1:
            raise UnitsError("no units to decode")
        if bool((frame_units < 0).any()) or bool((frame_units >= self.num_codes).any()):
            raise UnitsError(f"unit indices must lie in [0, {self.num_codes}) (the codebook size)")
        try:
            z_q = self.model.quantizer.decode(frame_units[None].to(self.device))
        except NotImplementedError as err:
            raise UnitsError(f"this model's quantizer cannot decode code indices ({err}); decode an Encoding instead") from None
        except ValueError as err:
            raise UnitsError(str(err)) from None
        return self.model.decode(z_q.float(), spk)[0].float().cpu()

    @property
    def vocoder(self):
        """The vocoder, built on first use (``griffin_lim`` unless another was asked for)."""
        from speechsq.vocoders import Vocoder, VocoderError, build_vocoder

        if not isinstance(self._vocoder, Vocoder):
            if self.pipeline.standardize and self.cmvn is None:
                raise VocoderError("this model's features are standardised: pass cmvn='feats/train/cmvn.npz' to speechsq.load")
            self._vocoder = build_vocoder(str(self._vocoder), self.cfg["preprocessing"], self.cmvn, self.device,
                                          **self._vocoder_options)
        return self._vocoder

    def vocode(self, log_mel: Tensor | np.ndarray) -> Tensor:
        """``(n_mels, frames)`` log-Mel (model feature units) -> ``(samples,)`` float32 waveform
        at :attr:`sample_rate` (CPU)."""
        return self.vocoder(log_mel)

    def convert(self, waveform: Any, sample_rate: int, speaker: str | int) -> Tensor:
        """Waveform -> the same content in ``speaker``'s voice (encode, decode, vocode)."""
        return self.vocode(self.decode(self.encode(waveform, sample_rate), speaker))


def load(checkpoint: str | Path, device: str | torch.device = "cpu", cmvn: Any = None,
         vocoder: Any = "griffin_lim", vocoder_options: dict | None = None) -> UnitCodec:
    """Load a trained speech model for :meth:`~UnitCodec.encode` / :meth:`~UnitCodec.decode` /
    :meth:`~UnitCodec.vocode` (see the module docstring for the 5-line example).

    checkpoint: ``checkpoints/last.pt`` of ``speechsq train`` (or an exported model dir);
    device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``; cmvn: ``cmvn.npz`` path or
    :class:`~speechsq.features.Cmvn` of standardised (VCTK) features, found next to the
    checkpoint or in the training features when not given; vocoder: ``griffin_lim``
    (default), ``parallel_wavegan`` (``vocoder_options={"checkpoint": "pwg/checkpoint-400000steps.pkl"}``)
    or a :class:`~speechsq.vocoders.Vocoder`.
    """
    return UnitCodec.from_checkpoint(checkpoint, device, cmvn, vocoder, vocoder_options)
