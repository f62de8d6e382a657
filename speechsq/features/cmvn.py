"""Per-dimension standardisation with training-set statistics (ParallelWaveGAN's
``compute_statistics.py`` + ``normalize.py``: sklearn ``StandardScaler`` semantics, i.e. the
population standard deviation, and a unit scale for constant dimensions).

The statistics live in ``feats/<train set>/cmvn.npz`` (``mean``, ``std``, ``count``) so that
evaluation can undo the standardisation (``Cmvn.inverse``) and report MSE in dB^2.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class RunningMoments:
    """Exact streaming mean/variance over frames (float64 sums, Chan et al. pairwise merge)."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def update(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames, dtype=np.float64)
        n = len(frames)
        if n == 0:
            return
        batch_mean = frames.mean(axis=0)
        batch_m2 = ((frames - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def finalize(self) -> "Cmvn":
        if self.count == 0:
            raise ValueError("no frames to compute statistics from")
        std = np.sqrt(self.m2 / self.count)
        std[std < 1e-8] = 1.0  # constant dimension: leave it centred, not blown up
        return Cmvn(self.mean.astype(np.float32), std.astype(np.float32), self.count)


@dataclass(frozen=True, eq=False)  # numpy fields: compare with np.array_equal
class Cmvn:
    mean: np.ndarray  # (n_mels,)
    std: np.ndarray  # (n_mels,)
    count: int = 0  # frames the statistics were computed on

    def apply(self, feats: np.ndarray) -> np.ndarray:
        return ((feats - self.mean) / self.std).astype(np.float32)

    def inverse(self, feats):
        """Undo :meth:`apply`; works on numpy arrays and (via broadcasting) on torch tensors
        laid out as (..., n_mels)."""
        return feats * self.std + self.mean

    def save(self, path: str | Path) -> None:
        """Write ``path`` atomically (a full disk raises DiskFullError and keeps the old file)."""
        from speechsq.completion import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, std=self.std, count=np.int64(self.count))
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Cmvn":
        with np.load(path) as data:
            return cls(data["mean"].astype(np.float32), data["std"].astype(np.float32), int(data["count"]))
