"""Reading and writing feature directories: ``feats.scp`` + ``feats.ark`` (kaldiio binary
matrices, ``(frames, n_mels)`` float32, Kaldi orientation) + ``utt2num_frames``.

Writing is atomic: the archive and tables are written under temporary names and renamed at
the end, ``feats.scp`` last, and an existing ``feats.scp`` is removed before a new run starts,
so an interrupted run never leaves a ``feats.scp`` that looks complete.

``feats.scp`` stores the archive's absolute path; if the directory was moved, the reader
falls back to the archive next to ``feats.scp``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import kaldiio
import numpy as np

from speechsq.data_prep.kaldi_dir import c_sorted, read_table
from speechsq.errors import SpeechsqError

SCP, ARK, NUM_FRAMES, CMVN, SKIPPED = "feats.scp", "feats.ark", "utt2num_frames", "cmvn.npz", "skipped"


class FeatureStoreError(SpeechsqError, FileNotFoundError):
    """A feature directory is missing or incomplete."""


class ArkWriter:
    """Append matrices to a temporary ark; ``commit()`` renames everything into place."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in (SCP, NUM_FRAMES):  # invalidate a previous run first
            (self.out_dir / stale).unlink(missing_ok=True)
        self.tmp_ark = self.out_dir / (ARK + ".tmp")
        self._file = open(self.tmp_ark, "wb")
        self.offsets: dict[str, int] = {}
        self.num_frames: dict[str, int] = {}

    def write(self, utt: str, feats: np.ndarray) -> None:
        if utt in self.offsets:
            raise ValueError(f"duplicate utterance {utt}")
        if feats.ndim != 2 or feats.dtype != np.float32:
            raise ValueError(f"{utt}: expected a 2-D float32 matrix, got {feats.dtype} {feats.shape}")
        # kaldiio writes "<utt> " and then the binary matrix; the scp offset points past the key.
        self.offsets[utt] = self._file.tell() + len((utt + " ").encode("utf-8"))
        kaldiio.save_ark(self._file, {utt: feats})
        self.num_frames[utt] = int(feats.shape[0])

    def commit(self) -> Path:
        self._file.close()
        ark = (self.out_dir / ARK).resolve()
        os.replace(self.tmp_ark, ark)
        _write_lines(self.out_dir / NUM_FRAMES, [f"{u} {self.num_frames[u]}" for u in c_sorted(self.num_frames)])
        _write_lines(self.out_dir / SCP, [f"{u} {ark}:{self.offsets[u]}" for u in c_sorted(self.offsets)])
        return self.out_dir / SCP

    def abort(self) -> None:
        self._file.close()
        self.tmp_ark.unlink(missing_ok=True)


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


class FeatureReader(Mapping):
    """Lazy ``utt -> (frames, n_mels)`` mapping over a feature directory (reads on access)."""

    def __init__(self, feats_dir: str | Path):
        self.feats_dir = Path(feats_dir)
        scp = self.feats_dir / SCP
        if not scp.is_file():
            raise FeatureStoreError(f"{scp} not found (features not computed, or the run did not finish)")
        self._entries: dict[str, tuple[str, int]] = {}
        for utt, rxspec in read_table(scp).items():
            path, _, offset = rxspec.rpartition(":")
            if not os.path.exists(path):  # directory moved: the ark sits next to feats.scp
                path = str(self.feats_dir / os.path.basename(path))
            self._entries[utt] = (path, int(offset))
        frames_file = self.feats_dir / NUM_FRAMES
        self.num_frames = (
            {u: int(n) for u, n in read_table(frames_file).items()} if frames_file.is_file() else None
        )

    def __getitem__(self, utt: str) -> np.ndarray:
        path, offset = self._entries[utt]
        return kaldiio.load_mat(f"{path}:{offset}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def cmvn(self):
        """The standardisation statistics stored with these features, or None."""
        from speechsq.features.cmvn import Cmvn

        path = self.feats_dir / CMVN
        return Cmvn.load(path) if path.is_file() else None


def load_features(feats_dir: str | Path) -> dict[str, np.ndarray]:
    """All features of a directory in memory, ``utt -> (frames, n_mels)`` float32."""
    reader = FeatureReader(feats_dir)
    return {utt: reader[utt] for utt in reader}
