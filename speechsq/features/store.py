"""Reading and writing feature directories: ``feats.scp`` + ``feats.ark`` (kaldiio binary
matrices, ``(frames, n_mels)`` float32, Kaldi orientation) + ``utt2num_frames`` + the
completion marker ``complete.json`` (kind ``features``, keys = the utterances of feats.scp).

Writing (:class:`ArkWriter`) never destroys a complete directory before its replacement is
complete: every output is written under a temporary name (``feats.ark.tmp``, ``skipped.tmp``,
...) next to the old files, which stay usable meanwhile. Only when all of them are written
and flushed does the commit run, and it only renames: it removes the old marker and the old
``feats.scp``, renames the new files into place, ``feats.scp`` last, and writes the new
marker. A full disk while writing (:class:`~speechsq.errors.DiskFullError`, "No space left on
device: PATH"), an interruption or any error removes the temporary files and leaves the old
directory as it was; a crash during the renames leaves no marker, so consumers refuse it.

Consumers call :func:`require_features`: the directory must be complete, its ``feats.scp``
must be the one the marker describes and, given a data dir, its utterances must be that data
dir's (less the ones ``compute-feats`` skipped and listed in ``skipped``).
:class:`FeatureReader` refuses NaN/Inf on every read, naming the utterance and the file.

``feats.scp`` stores the archive's absolute path; if the directory was moved, the reader
falls back to the archive next to ``feats.scp``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import kaldiio
import numpy as np

from speechsq.completion import MARKER, Completion, mark_complete, require_complete
from speechsq.data_prep.kaldi_dir import c_sorted, data_dir_utterances, read_table
from speechsq.errors import DiskFullError, IncompleteOutputError, MismatchError, SpeechsqError, is_disk_full

SCP, ARK, NUM_FRAMES, CMVN, SKIPPED = "feats.scp", "feats.ark", "utt2num_frames", "cmvn.npz", "skipped"
PREPROCESSING, AUDIO_REPORT = "preprocessing.yaml", "audio_report.json"
TMP = ".tmp"
# every file a feature directory may hold besides feats.scp and the marker; a commit replaces
# or removes each, so nothing of an older run (e.g. its cmvn.npz) survives next to new features
OUTPUTS = (ARK, NUM_FRAMES, SKIPPED, PREPROCESSING, CMVN, AUDIO_REPORT)
PRODUCER = "speechsq compute-feats"
REMEDY = "run `speechsq compute-feats` again"


class FeatureStoreError(SpeechsqError, FileNotFoundError):
    """A feature directory is missing or incomplete."""


class NonFiniteFeaturesError(SpeechsqError, ValueError):
    """Stored features hold NaN or Inf."""


def _disk_full_as(path: Path, err: BaseException) -> BaseException:
    return DiskFullError(path) if is_disk_full(err) and not isinstance(err, DiskFullError) else err


def _sync_close(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


class ArkWriter:
    """Append matrices to ``feats.ark.tmp`` and stage the other outputs; :meth:`commit` swaps
    them in (see the module docstring); :meth:`abort` removes every temporary file."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name in (*OUTPUTS, SCP):  # temporaries of a killed run: never valid, remove them
            (self.out_dir / (name + TMP)).unlink(missing_ok=True)
        self.tmp_ark = self.out_dir / (ARK + TMP)
        self._staged: set[str] = {ARK}
        self._file = open(self.tmp_ark, "wb")
        self.offsets: dict[str, int] = {}
        self.num_frames: dict[str, int] = {}

    def write(self, utt: str, feats: np.ndarray) -> None:
        if utt in self.offsets:
            raise ValueError(f"duplicate utterance {utt}")
        if feats.ndim != 2 or feats.dtype != np.float32:
            raise ValueError(f"{utt}: expected a 2-D float32 matrix, got {feats.dtype} {feats.shape}")
        if not np.isfinite(feats).all():
            raise NonFiniteFeaturesError(f"{utt}: refusing to store features with NaN/Inf")
        # kaldiio writes "<utt> " and then the binary matrix; the scp offset points past the key.
        offset = self._file.tell() + len((utt + " ").encode("utf-8"))
        try:
            kaldiio.save_ark(self._file, {utt: feats})
        except OSError as err:
            raise _disk_full_as(self.tmp_ark, err) from err
        self.offsets[utt] = offset
        self.num_frames[utt] = int(feats.shape[0])

    def staged_path(self, name: str) -> Path:
        """Where to write output ``name`` (one of :data:`OUTPUTS`) until the commit."""
        if name not in OUTPUTS:
            raise ValueError(f"{name!r} is not a feature directory output ({', '.join(OUTPUTS)})")
        self._staged.add(name)
        return self.out_dir / (name + TMP)

    def stage_text(self, name: str, text: str) -> None:
        path = self.staged_path(name)
        try:
            with open(path, "wb") as f:
                f.write(text.encode("utf-8"))
                _sync_close(f)
        except OSError as err:
            raise _disk_full_as(path, err) from err

    def commit(self, **info) -> Path:
        """Finish the archive and the tables, swap them into place and mark the directory
        complete (``info``: extra marker fields, e.g. the data dir the features came from)."""
        try:
            _sync_close(self._file)
        except OSError as err:
            raise _disk_full_as(self.tmp_ark, err) from err
        ark = (self.out_dir / ARK).resolve()
        utts = c_sorted(self.offsets)
        self.stage_text(NUM_FRAMES, "".join(f"{u} {self.num_frames[u]}\n" for u in utts))
        scp_tmp = self.out_dir / (SCP + TMP)
        try:
            scp_tmp.write_text("".join(f"{u} {ark}:{self.offsets[u]}\n" for u in utts), encoding="utf-8")
        except OSError as err:
            raise _disk_full_as(scp_tmp, err) from err
        # everything is on disk: from here on only renames (no space needed)
        (self.out_dir / MARKER).unlink(missing_ok=True)
        (self.out_dir / SCP).unlink(missing_ok=True)
        for name in OUTPUTS:
            if name in self._staged:
                os.replace(self.out_dir / (name + TMP), self.out_dir / name)
            else:
                (self.out_dir / name).unlink(missing_ok=True)
        os.replace(scp_tmp, self.out_dir / SCP)
        mark_complete(self.out_dir, "features", utts, producer=PRODUCER, **info)
        return self.out_dir / SCP

    def abort(self) -> None:
        """Remove every temporary file (the old directory, if any, is untouched)."""
        try:
            self._file.close()
        except OSError:
            pass  # flushing onto a full disk: the file goes anyway
        finally:
            for name in (*self._staged, SCP):
                (self.out_dir / (name + TMP)).unlink(missing_ok=True)


class FeatureReader(Mapping):
    """Lazy ``utt -> (frames, n_mels)`` mapping over a feature directory (reads on access).

    Every read checks the matrix is finite (:class:`NonFiniteFeaturesError` names the
    utterance and the archive). Does not check completeness: use :func:`require_features`.
    """

    def __init__(self, feats_dir: str | Path):
        self.feats_dir = Path(feats_dir)
        scp = self.feats_dir / SCP
        if not scp.is_file():
            raise FeatureStoreError(f"{scp} not found (features not computed, or the run did not finish); {REMEDY}")
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
        self.completion: Completion | None = None  # set by require_features

    def __getitem__(self, utt: str) -> np.ndarray:
        path, offset = self._entries[utt]
        matrix = kaldiio.load_mat(f"{path}:{offset}")
        check_finite(matrix, utt, path)
        return matrix

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def cmvn(self):
        """The standardisation statistics stored with these features, or None."""
        from speechsq.features.cmvn import Cmvn

        path = self.feats_dir / CMVN
        return Cmvn.load(path) if path.is_file() else None

    def skipped(self) -> dict[str, str]:
        """``utt -> "<reason> <detail>"`` of the utterances compute-feats skipped."""
        path = self.feats_dir / SKIPPED
        return read_table(path, allow_empty_value=True) if path.is_file() else {}


def check_finite(matrix: np.ndarray, utt: str, source: str | Path,
                 error: type[SpeechsqError] = NonFiniteFeaturesError) -> None:
    """Raise ``error`` naming ``utt`` and ``source`` if ``matrix`` has NaN/Inf."""
    finite = np.isfinite(matrix)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        first = int(np.argwhere(~finite)[0][0])
        raise error(
            f"utterance {utt!r} in {source} has {bad} NaN/Inf values (first at frame {first}); "
            "recompute these features (`speechsq compute-feats`) and check the audio"
        )


def require_features(feats_dir: str | Path, data_dir: str | Path | None = None) -> FeatureReader:
    """A reader over a *complete* feature directory, optionally checked against its data dir.

    * the directory must carry a ``features`` marker (:class:`IncompleteOutputError`
      otherwise: compute-feats failed, was interrupted or is still running);
    * ``feats.scp`` must list exactly the marker's utterances (else the directory was changed
      after compute-feats finished);
    * with ``data_dir``: every feature utterance must be in the data dir, and every
      utterance of the data dir must have features or be listed in ``skipped`` by
      compute-feats (:class:`MismatchError` with counts otherwise, naming the data dir the
      features were computed from).

    Used by ``extract``, ``evaluate``, training (``SpeechSegmentSource``) and ``abx``.
    """
    feats_dir = Path(feats_dir)
    marker = require_complete(feats_dir, "features", remedy=REMEDY)
    reader = FeatureReader(feats_dir)
    if not marker.matches(reader):
        raise IncompleteOutputError(
            f"{feats_dir / SCP} lists {len(reader)} utterances but {feats_dir / MARKER} says {marker.count} "
            f"(the directory was changed after compute-feats finished); {REMEDY}"
        )
    reader.completion = marker
    if data_dir is not None:
        check_against_data_dir(reader, data_dir)
    return reader


def check_against_data_dir(reader: FeatureReader, data_dir: str | Path) -> None:
    """Features of exactly ``data_dir``'s utterances (less the ones compute-feats skipped)."""
    expected = set(data_dir_utterances(data_dir))
    found = set(reader)
    made_from = (reader.completion.info.get("data_dir") if reader.completion else None) or "an unknown data dir"
    where = f"features {reader.feats_dir} (computed from {made_from})"
    extra = c_sorted(found - expected)
    missing = c_sorted(expected - found - set(reader.skipped()))
    if not found & expected:
        raise MismatchError(f"{where} have no utterance in common with {data_dir} ({len(found)} vs {len(expected)} "
                            f"utterances): pass the feature dir computed from {data_dir}")
    if extra:
        raise MismatchError(f"{where}: {len(extra)} of their {len(found)} utterances are not in {data_dir} "
                            f"(e.g. {', '.join(extra[:3])}): pass the feature dir computed from {data_dir}")
    if missing:
        raise MismatchError(f"{where}: {len(missing)} of the {len(expected)} utterances of {data_dir} have no "
                            f"features and are not listed as skipped (e.g. {', '.join(missing[:3])}); "
                            f"the data dir changed after compute-feats: {REMEDY}")


def load_features(feats_dir: str | Path) -> dict[str, np.ndarray]:
    """All features of a directory in memory, ``utt -> (frames, n_mels)`` float32."""
    reader = FeatureReader(feats_dir)
    return {utt: reader[utt] for utt in reader}
