"""Spectrogram reconstruction error in dB^2, as SQ-VAE Tables 3 and 9.

Every utterance of an evaluation list (utterance, target speaker) is passed through the
deterministic encoder and decoder (``model.reconstruct``) and the squared error is pooled
over all utterances::

    MSE [dB^2] = sum_utt sum_{mel, frame} (s * (x_hat - x))^2 / (n_mels * total frames)

``s`` converts feature units to dB: ``top_db`` for the ZeroSpeech 2019 features (they are
``dB / top_db + 1``), the per-dimension standard deviation of ``cmvn.npz`` for standardised
(VCTK) features (they are ``(dB - mean) / std``; the mean cancels in a difference).

Frame trimming (``trim="reference"``, the sony/sqvae ``evaluate_mse.py`` convention): an
utterance with an odd number of frames loses its last frame (the encoder downsamples by 2),
and of the remaining even ``T`` frames the first and the last are not scored (the
reference's unpadded first convolution consumes them as context), so each utterance
contributes ``T - 2`` frames. ``trim="none"`` scores every frame the model returns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

TRIMS = ("reference", "none")


@dataclass
class MSEResult:
    mse_db2: float
    n_utterances: int
    n_frames: int
    skipped: list[str] = field(default_factory=list)
    per_utterance: dict[str, float] = field(default_factory=dict)  # dB^2 of each utterance

    def to_dict(self, with_utterances: bool = False) -> dict:
        out = asdict(self)
        if not with_utterances:
            out.pop("per_utterance")
        return out


def db_scale(n_mels: int, top_db: float | None = None, cmvn_std: np.ndarray | None = None) -> np.ndarray:
    """Per-mel factor turning a feature difference into a dB difference."""
    if (top_db is None) == (cmvn_std is None):
        raise ValueError("give exactly one of top_db (ZeroSpeech features) or cmvn_std (standardised features)")
    if cmvn_std is not None:
        std = np.asarray(cmvn_std, dtype=np.float64).reshape(-1)
        if std.shape != (n_mels,):
            raise ValueError(f"cmvn std has {std.shape[0]} dims, features have {n_mels}")
        return std
    return np.full(n_mels, float(top_db))


def scored_frames(length: int, trim: str) -> tuple[int, int, int]:
    """(frames fed to the model, first scored frame, end of scored frames)."""
    if trim == "reference":
        even = length - length % 2
        return even, 1, even - 1
    if trim == "none":
        return length, 0, length
    raise ValueError(f"unknown trim {trim!r}; choose one of {TRIMS}")


def squared_error_db(x_hat: np.ndarray, x: np.ndarray, scale: np.ndarray) -> float:
    """sum of (scale * (x_hat - x))^2 over (n_mels, frames) arrays."""
    diff = (np.asarray(x_hat, np.float64) - np.asarray(x, np.float64)) * scale[:, None]
    return float((diff**2).sum())


def evaluate_mse(
    model,
    feats: Mapping[str, np.ndarray],
    eval_list: Sequence[tuple[str, str | int]],
    scale: np.ndarray,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    trim: str = "reference",
    progress: bool = True,
) -> MSEResult:
    """Pooled reconstruction MSE in dB^2.

    feats: ``utt -> (frames, n_mels)`` (Kaldi orientation) in model units.
    eval_list: ``(utt, target speaker)``, the speaker a name (``model.speaker_ids``) or an id.
    scale: from :func:`db_scale`.
    """
    if not eval_list:
        raise ValueError("empty evaluation list")
    names = [spk for _, spk in eval_list]
    if all(isinstance(s, (int, np.integer)) for s in names):
        speaker_ids = torch.as_tensor(names, dtype=torch.long)
    else:
        speaker_ids = model.speaker_ids([str(s) for s in names])
    jobs = []
    skipped = []
    for (utt, _), spk in zip(eval_list, speaker_ids.tolist()):
        if utt not in feats:
            raise KeyError(f"utterance {utt!r} of the evaluation list has no features")
        matrix = np.asarray(feats[utt], dtype=np.float32)
        fed, lo, hi = scored_frames(matrix.shape[0], trim)
        if hi - lo < 1 or fed < 2:
            skipped.append(utt)
            continue
        jobs.append((utt, spk, matrix[:fed], lo, hi))
    if skipped:
        log.warning("MSE: %d utterances too short to score (e.g. %s)", len(skipped), skipped[:3])
    jobs.sort(key=lambda job: job[2].shape[0])  # similar lengths per batch: little padding

    total, frames = 0.0, 0
    per_utt: dict[str, float] = {}
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    for batch in tqdm(batches, desc="mse", disable=not progress):
        lengths = torch.tensor([job[2].shape[0] for job in batch])
        width = int(lengths.max())
        x = np.zeros((len(batch), model.n_mels if hasattr(model, "n_mels") else batch[0][2].shape[1], width), np.float32)
        for row, job in enumerate(batch):
            x[row, :, : job[2].shape[0]] = job[2].T
        speakers = torch.tensor([job[1] for job in batch], dtype=torch.long)
        with torch.no_grad():
            x_hat = model.reconstruct(torch.from_numpy(x).to(device), lengths.to(device), speakers.to(device))
        x_hat = x_hat.float().cpu().numpy()
        for row, (utt, _, matrix, lo, hi) in enumerate(batch):
            err = squared_error_db(x_hat[row, :, lo:hi], matrix.T[:, lo:hi], scale)
            total += err
            frames += hi - lo
            per_utt[utt] = err / (len(scale) * (hi - lo))
    if frames == 0:
        raise ValueError("no utterance long enough to score")
    return MSEResult(total / (len(scale) * frames), len(jobs), frames, skipped, per_utt)


def read_eval_list(data_dir: str | Path, eval_list: str | Path | None = None) -> list[tuple[str, str]]:
    """``(utt, speaker)`` pairs: from a file of ``<utt> <target speaker>`` lines, or else
    every utterance of the data dir with its own speaker (``utt2spk``), as the reference."""
    if eval_list is not None:
        pairs = []
        for lineno, line in enumerate(Path(eval_list).read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{eval_list}:{lineno}: expected '<utt> <speaker>', got {line!r}")
            pairs.append((fields[0], fields[1]))
        return pairs
    from speechsq.data_prep.kaldi_dir import read_table

    utt2spk = read_table(Path(data_dir) / "utt2spk")
    return sorted(utt2spk.items())
