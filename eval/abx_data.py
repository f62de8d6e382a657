"""ABX inputs: the libri-light item file and per-file features, cut into item frames.

Item file (libri-light / ZeroSpeech format): a header line, then one item per line::

    #file onset offset #phone prev-phone next-phone speaker

``onset``/``offset`` in seconds. Phones, contexts (``prev+next``) and speakers get integer
ids in order of first appearance, as in the reference tools (those ids fix the order in
which seeded subsampling draws, so keeping them identical keeps the draws identical).

Features: one ``<file>.npy`` (or ``.txt``) per file, ``(frames, dim)``; a 1-D array is
read as one column (discrete units). Frame ``k`` is centred at ``frame_offset + k *
frame_shift`` seconds; an item keeps frames ``[ceil(r*(onset-o) - 0.5), floor(r*(offset-o)
- 0.5))`` clipped to the file, ``r = 1 / frame_shift`` (the reference's slicing; with
``frame_offset = 0`` the arithmetic is exactly the reference's).

As in the reference, every frame is L2-normalised and extended with one extra coordinate
(``1e-12``, or ``-2e12`` for an all-zero frame, which puts a null frame at the maximal
angle from every other frame); this applies to every frame distance, not only cosine.
Discrete-unit inputs (edit distance) are kept as integers.

Anything the reference silently drops is counted in :class:`ABXInputReport` instead:
items whose file is missing, items with no frames, items with non-finite values, and,
for KL divergences, items with negative values (a KL of negative "probabilities" is
undefined; the reference would compare NaNs and count them as errors).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

FEATURE_EXTENSIONS = (".npy", ".txt")


class ItemFileError(SpeechsqError, ValueError):
    """The item file cannot be parsed."""


@dataclass
class ItemTable:
    """All items of an item file, as parallel arrays (one entry per item line)."""

    file_ids: list[str]
    onsets: np.ndarray  # float64 seconds
    offsets: np.ndarray
    phone: np.ndarray  # int ids, in order of first appearance
    context: np.ndarray
    speaker: np.ndarray
    phone_names: list[str]
    context_names: list[str]
    speaker_names: list[str]

    def __len__(self) -> int:
        return len(self.file_ids)


def read_item_file(path: str | Path) -> ItemTable:
    """Parse a libri-light ``.item`` file (the first line is a header and is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ItemFileError(f"item file not found: {path}")
    file_ids: list[str] = []
    onsets: list[float] = []
    offsets: list[float] = []
    ids: dict[str, dict[str, int]] = {"phone": {}, "context": {}, "speaker": {}}
    columns: dict[str, list[int]] = {"phone": [], "context": [], "speaker": []}
    with open(path) as handle:
        lines = handle.read().splitlines()[1:]
    for lineno, line in enumerate(lines, start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 7:
            raise ItemFileError(
                f"{path}:{lineno}: expected 7 columns (#file onset offset #phone prev next speaker), got {len(fields)}"
            )
        try:
            onset, offset = float(fields[1]), float(fields[2])
        except ValueError:
            raise ItemFileError(f"{path}:{lineno}: onset/offset are not numbers: {line!r}") from None
        file_ids.append(fields[0])
        onsets.append(onset)
        offsets.append(offset)
        values = {"phone": fields[3], "context": f"{fields[4]}+{fields[5]}", "speaker": fields[6]}
        for kind, value in values.items():
            columns[kind].append(ids[kind].setdefault(value, len(ids[kind])))
    if not file_ids:
        raise ItemFileError(f"{path}: no items")
    return ItemTable(
        file_ids=file_ids,
        onsets=np.asarray(onsets),
        offsets=np.asarray(offsets),
        phone=np.asarray(columns["phone"], dtype=np.int64),
        context=np.asarray(columns["context"], dtype=np.int64),
        speaker=np.asarray(columns["speaker"], dtype=np.int64),
        phone_names=list(ids["phone"]),
        context_names=list(ids["context"]),
        speaker_names=list(ids["speaker"]),
    )


def find_feature_files(root: str | Path, extension: str = ".npy") -> dict[str, Path]:
    """``{file id: path}`` for every ``*<extension>`` under ``root``.

    The walk order is ``os.walk``'s, which is what the reference uses: it decides the order
    of items inside a group and thereby which items seeded subsampling picks.
    """
    if extension not in FEATURE_EXTENSIONS:
        raise ValueError(f"feature extension must be one of {FEATURE_EXTENSIONS}, got {extension!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"feature directory not found: {root}")
    found: dict[str, Path] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(extension):
                found[Path(name).stem] = Path(dirpath) / name
    return found


def load_feature_file(path: Path) -> np.ndarray:
    """Read one feature file as a 2-D array (a 1-D array becomes one column)."""
    if path.suffix == ".npy":
        array = np.load(path)
    else:
        array = np.loadtxt(path, ndmin=2)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{path}: features must be (frames, dim), got shape {array.shape}")
    return array


def normalize_with_singularity(frames: np.ndarray) -> np.ndarray:
    """L2-normalise each frame and append the reference's extra coordinate.

    Computed in the file's dtype, then stored as float32 (as the reference does).
    """
    norm2 = (frames**2).sum(axis=1, keepdims=True)
    zero = norm2[:, 0] == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = frames / np.sqrt(norm2)
    out[zero] = 1 / math.sqrt(frames.shape[1])
    border = np.full((frames.shape[0], 1), 1e-12, dtype=frames.dtype)
    border[zero] = -2 * 1e12
    return np.concatenate([out, border], axis=1).astype(np.float32)


@dataclass
class ABXInputReport:
    """What happened to the items of the item file (nothing is dropped silently)."""

    n_items: int = 0
    n_items_used: int = 0
    missing_files: int = 0
    items_missing_file: int = 0
    empty_items: int = 0
    nonfinite_items: int = 0
    negative_items: int = 0
    single_frame_files: int = 0
    unused_feature_files: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, example: str) -> None:
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < 5:
            bucket.append(example)

    def to_dict(self) -> dict:
        return asdict(self)

    def log_summary(self) -> None:
        problems = {
            "items whose feature file is missing": self.items_missing_file,
            "items with no frames": self.empty_items,
            "items with non-finite values": self.nonfinite_items,
            "items with negative values (KL)": self.negative_items,
        }
        for what, count in problems.items():
            if count:
                log.warning("ABX: skipped %d %s", count, what)
        if self.single_frame_files:
            log.info("ABX: %d feature files have a single frame", self.single_frame_files)
        log.info("ABX: %d of %d items used", self.n_items_used, self.n_items)


@dataclass
class ABXDataset:
    """The usable items: their frames concatenated, plus phone/context/speaker ids.

    Item ``k`` owns ``frames[start[k] : start[k] + length[k]]``. For discrete units
    ``frames`` is ``(total, 1)`` int64, otherwise ``(total, dim + 1)`` float32
    (normalised, see the module docstring).
    """

    frames: np.ndarray
    start: np.ndarray
    length: np.ndarray
    phone: np.ndarray
    context: np.ndarray
    speaker: np.ndarray
    items: ItemTable
    report: ABXInputReport

    def __len__(self) -> int:
        return len(self.start)


def item_frame_range(onset: float, offset: float, n_frames: int, step: float, frame_offset: float) -> tuple[int, int]:
    """The reference's slicing of an item; ``step = 1 / frame_shift``."""
    start = max(0, int(math.ceil(step * (onset - frame_offset) - 0.5)))
    end = int(min(n_frames, int(math.floor(step * (offset - frame_offset) - 0.5))))
    return start, end


def build_dataset(
    items: ItemTable,
    features: Mapping[str, np.ndarray | Path],
    frame_shift: float,
    frame_offset: float = 0.0,
    discrete: bool = False,
    normalize: bool = True,
    require_nonnegative: bool = False,
    dedup_units: bool = False,
) -> ABXDataset:
    """Cut every item out of its file's features.

    features: ``{file id: array or path}`` in the order files should be visited (the
    reference visits files in ``os.walk`` order, items of a file in item-file order).
    discrete: features are unit indices (one column); they are kept as integers and,
        with ``dedup_units``, runs of the same unit inside an item are collapsed.
    require_nonnegative: skip (and count) items with negative values (KL divergences).
    """
    if frame_shift <= 0:
        raise ValueError(f"frame_shift must be positive, got {frame_shift}")
    step = 1 / frame_shift  # the reference multiplies by 1/shift; dividing rounds differently
    report = ABXInputReport(n_items=len(items))
    by_file: dict[str, list[int]] = {}
    for index, file_id in enumerate(items.file_ids):
        by_file.setdefault(file_id, []).append(index)
    missing = [f for f in by_file if f not in features]
    report.missing_files = len(missing)
    report.items_missing_file = sum(len(by_file[f]) for f in missing)
    for file_id in missing[:5]:
        report.note("missing_files", file_id)
    report.unused_feature_files = sum(1 for f in features if f not in by_file)

    chunks: list[np.ndarray] = []
    kept: list[int] = []
    lengths: list[int] = []
    dim = None
    for file_id, source in features.items():
        if file_id not in by_file:
            continue
        array = load_feature_file(Path(source)) if isinstance(source, (str, Path)) else np.asarray(source)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise ValueError(f"features of {file_id!r} must be (frames, dim), got shape {array.shape}")
        if discrete and array.shape[1] != 1:
            raise ValueError(f"discrete units need one column per frame, {file_id!r} has {array.shape[1]}")
        if dim is None:
            dim = array.shape[1]
        elif array.shape[1] != dim:
            raise ValueError(f"features of {file_id!r} have dim {array.shape[1]}, earlier files have {dim}")
        if array.shape[0] == 1:
            report.single_frame_files += 1
        if discrete:
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError(f"discrete units of {file_id!r} are not integers")
            prepared = array.astype(np.int64)
        elif normalize and array.shape[0]:
            prepared = normalize_with_singularity(array)
        else:
            prepared = array.astype(np.float32)
        for index in by_file[file_id]:
            start, end = item_frame_range(items.onsets[index], items.offsets[index], array.shape[0], step, frame_offset)
            if start >= array.shape[0] or end <= start:
                report.empty_items += 1
                report.note("empty_items", f"{file_id} {items.onsets[index]} {items.offsets[index]}")
                continue
            frames = prepared[start:end]
            if not discrete:
                if not np.all(np.isfinite(frames)):
                    report.nonfinite_items += 1
                    report.note("nonfinite_items", file_id)
                    continue
                if require_nonnegative and np.any(frames < 0):
                    report.negative_items += 1
                    report.note("negative_items", file_id)
                    continue
            elif dedup_units:
                keep = np.ones(len(frames), dtype=bool)
                keep[1:] = frames[1:, 0] != frames[:-1, 0]
                frames = frames[keep]
            chunks.append(frames)
            kept.append(index)
            lengths.append(len(frames))

    report.n_items_used = len(kept)
    kept_arr = np.asarray(kept, dtype=np.int64)
    length = np.asarray(lengths, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64) if len(length) else length
    width = 1 if discrete else ((dim or 0) + (1 if normalize else 0))
    frames = np.concatenate(chunks) if chunks else np.zeros((0, width), dtype=np.int64 if discrete else np.float32)
    return ABXDataset(
        frames=frames,
        start=start,
        length=length,
        phone=items.phone[kept_arr],
        context=items.context[kept_arr],
        speaker=items.speaker[kept_arr],
        items=items,
        report=report,
    )
