"""Held-out batches for the trainer's validation pass (docs/ARCHITECTURE.md section 5).

A validation source is any object with::

    batches() -> Iterator[dict[str, Tensor]]   # this process's held-out batches: the same
                                               # batches, in the same order, at every call
    examples: int                              # how many examples they hold (this process)

Batches have the training batches' keys and layout, so the model's forward is the same;
dim 0 of every tensor is the example. Building one never changes the training source.
Register a factory per batch source name (``cfg.data.name``); it returns None when the data
config names no validation set::

    @VALIDATION_SOURCES.register("my_data")
    def build_my_validation(cfg_data, *, rank, world_size, train_source) -> ValidationSource | None

* ``speech_segments``: ``data.valid_feats_dir`` (a feats dir of held-out utterances, e.g. a
  dev set from ``speechsq compute-feats``; speakers from ``data.valid_data_dir``'s utt2spk,
  else the feats dir's). Each utterance is cut into consecutive non-overlapping windows of
  the training segment length (``segment_frames + 2 context_frames``); utterances of
  speakers the model was not trained on are left out (counted in the log), because the
  decoder is conditioned on the training speakers.
* ``images``: the ``data.valid_split`` split (``valid`` by default: the papers' held-out
  10,000 images; null: none) of the same dataset, every image once, in order.

Under data parallelism process ``rank`` takes items ``rank::world_size``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from speechsq.data import per_process_batch_size
from speechsq.data.speech import _read_table  # `<key> <value>` tables with file:line errors
from speechsq.errors import SpeechsqError
from speechsq.registry import Registry

log = logging.getLogger(__name__)


@runtime_checkable
class ValidationSource(Protocol):
    examples: int

    def batches(self) -> Iterator[dict[str, Tensor]]: ...


VALIDATION_SOURCES: Registry[Callable[..., ValidationSource | None]] = Registry("validation source")


class ValidationDataError(SpeechsqError, ValueError):
    """A held-out set that cannot be used for validation."""


def build_validation_source(cfg_data: Any, *, rank: int = 0, world_size: int = 1, train_source=None) -> ValidationSource | None:
    """The held-out batches that ``cfg_data`` names, or None (no validation set)."""
    name = str(cfg_data.get("name"))
    if name not in VALIDATION_SOURCES:
        return None
    return VALIDATION_SOURCES.get(name)(cfg_data, rank=rank, world_size=world_size, train_source=train_source)


class SpeechValidationSegments:
    """Fixed windows of held-out utterances (see the module docstring)."""

    def __init__(self, feats_dir: str | Path, speakers: list[str], window: int, batch_size: int, n_mels: int | None = None,
                 data_dir: str | Path | None = None, rank: int = 0, world_size: int = 1):
        import kaldiio

        self.feats_dir = Path(feats_dir)
        scp = self.feats_dir / "feats.scp"
        if not scp.is_file():
            raise ValidationDataError(f"data.valid_feats_dir: {scp} is missing; run `speechsq compute-feats` for the "
                                      "held-out set first")
        spk_file = Path(data_dir) / "utt2spk" if data_dir else self.feats_dir / "utt2spk"
        if not spk_file.is_file():
            raise ValidationDataError(f"data.valid_feats_dir: no utt2spk at {spk_file}; set data.valid_data_dir to the "
                                      "held-out set's Kaldi data dir")
        utt2spk = _read_table(spk_file)
        index = {s: i for i, s in enumerate(speakers)}
        reader = kaldiio.load_scp(str(scp))
        utterances = sorted(_read_table(scp))
        unknown = sorted(u for u in utterances if utt2spk.get(u) not in index)
        if unknown:
            log.info("validation: %d of %d held-out utterance(s) left out: their speaker is not a training speaker "
                     "(e.g. %s)", len(unknown), len(utterances), ", ".join(unknown[:3]))
        segments = []
        left_out = set(unknown)
        for utt in (u for u in utterances if u not in left_out):
            mat = np.asarray(reader[utt], dtype=np.float32)
            if mat.ndim != 2 or (n_mels is not None and mat.shape[1] != n_mels):
                raise ValidationDataError(f"held-out utterance {utt!r} in {self.feats_dir}: features must be "
                                          f"(frames, n_mels={n_mels}), got {mat.shape}")
            if not np.isfinite(mat).all():
                raise ValidationDataError(f"held-out utterance {utt!r} in {self.feats_dir} has NaN/Inf features")
            for start in range(0, mat.shape[0] - window + 1, window):
                segments.append((mat[start : start + window].T.copy(), index[utt2spk[utt]]))
        if not segments:
            raise ValidationDataError(f"data.valid_feats_dir={self.feats_dir}: no held-out utterance of a training speaker "
                                      f"has the {window} frames of one segment")
        self._segments = segments[rank::world_size]
        self.batch_size = per_process_batch_size(batch_size, world_size)
        self.examples = len(self._segments)
        self.window = window
        log.info("validation: %d segments of %d frames from %s (process %d/%d)", self.examples, window, self.feats_dir,
                 rank, world_size)

    def batches(self) -> Iterator[dict[str, Tensor]]:
        for start in range(0, len(self._segments), self.batch_size):
            chunk = self._segments[start : start + self.batch_size]
            yield {
                "feats": torch.from_numpy(np.stack([seg for seg, _ in chunk])),
                "speaker": torch.tensor([spk for _, spk in chunk], dtype=torch.long),
                "lengths": torch.full((len(chunk),), self.window, dtype=torch.long),
            }


@VALIDATION_SOURCES.register("speech_segments")
def build_speech_validation(cfg_data: Any, *, rank: int = 0, world_size: int = 1, train_source=None):
    feats_dir = cfg_data.get("valid_feats_dir")
    if not feats_dir:
        return None
    if train_source is None or not hasattr(train_source, "speakers"):
        raise ValidationDataError("speech validation needs the training source (its speaker ids)")
    window = int(cfg_data.get("segment_frames", 32)) + 2 * int(cfg_data.get("context_frames", 1))
    n_mels = cfg_data.get("n_mels")
    return SpeechValidationSegments(feats_dir, list(train_source.speakers), window, int(cfg_data.get("batch_size", 52)),
                                    None if n_mels is None else int(n_mels), cfg_data.get("valid_data_dir"), rank, world_size)


class ImageValidationBatches:
    """Every image of a held-out split once, in order (this process's share)."""

    def __init__(self, split, batch_size: int, rank: int = 0, world_size: int = 1):
        self.split = split
        self.indices = np.arange(len(split))[rank::world_size]
        self.batch_size = per_process_batch_size(batch_size, world_size)
        self.examples = len(self.indices)

    def batches(self) -> Iterator[dict[str, Tensor]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.split.tensors(self.indices[start : start + self.batch_size])


@VALIDATION_SOURCES.register("images")
def build_image_validation(cfg_data: Any, *, rank: int = 0, world_size: int = 1, train_source=None):
    from speechsq.data.images import load_split_from_config

    split_name = cfg_data.get("valid_split", "valid")
    if split_name is None:
        return None
    if split_name == cfg_data.get("split", "train"):
        raise ValidationDataError(f"data.valid_split={split_name} is the training split; held-out images must be another "
                                  "split (valid or test), or null for no validation")
    split = load_split_from_config(cfg_data, str(split_name))
    return ImageValidationBatches(split, int(cfg_data.get("batch_size", 32)), rank, world_size)
