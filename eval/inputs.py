"""What evaluation reads, checked before anything is scored.

``speechsq evaluate`` (and ``extract``) never score partial or mismatched inputs:

* a units dir must carry the ``units`` completion marker written last by ``speechsq extract``
  (:func:`require_units`); its ``indices/*.npy`` must be the marker's utterances, and it must
  have been extracted with the checkpoint being evaluated (compared by content, SHA-256,
  so a retrained ``last.pt`` under the same name is caught);
* every file an ABX item file names must be in the units (:func:`items_for`); items of
  utterances that extraction knowingly left out (compute-feats skipped them) are dropped and
  counted, any other gap is an error with counts that names where the units came from;
* stored arrays must be finite (:func:`read_unit_arrays`).

Every failure is a one-line :class:`~speechsq.errors.SpeechsqError` naming the file and the
command that fixes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechsq.completion import Completion, require_complete
from speechsq.data_prep.kaldi_dir import c_sorted
from speechsq.errors import IncompleteOutputError, MismatchError, SpeechsqError

UNITS_REMEDY = "run `speechsq extract` again"


class EvalInputError(SpeechsqError, ValueError):
    """Options or inputs of an evaluation command that cannot work together."""


class NonFiniteOutputError(SpeechsqError, ValueError):
    """A model or a stored unit array produced NaN/Inf."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_step(path: str | Path) -> int | None:
    """The training step stored in a checkpoint: read without running any code where the file
    allows it (tensors and plain containers), else through the trainer's own loader (which the
    command runs on this file next anyway); None for other formats."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # noqa: BLE001 - a pickled checkpoint, or another format: try the trainer's loader
        pass
    try:
        from speechsq.training.checkpoint import load_checkpoint

        return int(load_checkpoint(path)["step"])
    except Exception:  # noqa: BLE001 - the step is informative only
        return None


def checkpoint_identity(path: str | Path) -> dict:
    """``checkpoint`` (resolved path), ``checkpoint_sha256`` and ``checkpoint_step`` of a
    checkpoint file, recorded in unit and evaluation markers."""
    path = Path(path)
    return {"checkpoint": str(path.resolve()), "checkpoint_sha256": file_sha256(path), "checkpoint_step": checkpoint_step(path)}


def describe_checkpoint(identity: dict) -> str:
    step = identity.get("checkpoint_step")
    return f"{identity.get('checkpoint')}" + (f" (step {step})" if step is not None else "")


@dataclass
class UnitsDir:
    """A complete units dir written by ``speechsq extract``."""

    path: Path
    completion: Completion
    utterances: list[str]

    @property
    def source(self) -> str:
        """Where the units came from, for messages ("data dir data/test", "audio in wavs/")."""
        info = self.completion.info
        if info.get("data_dir"):
            return f"data dir {info['data_dir']}"
        if info.get("wav"):
            return f"audio in {info['wav']}"
        return "an unknown source"

    @property
    def left_out(self) -> set[str]:
        """Utterances extraction knowingly left out (skipped by compute-feats, or allowed missing)."""
        info = self.completion.info
        return set(info.get("skipped_by_features", {})) | set(info.get("missing", []))

    @property
    def described(self) -> str:
        return f"the units {self.path} (extracted from {self.source})"

    @property
    def frame_shift(self) -> float | None:
        value = self.completion.info.get("frame_shift")
        return None if value is None else float(value)


def require_units(units_dir: str | Path, checkpoint: dict | None = None) -> UnitsDir:
    """The complete units dir ``units_dir``; with ``checkpoint`` (:func:`checkpoint_identity`)
    it must have been extracted with that checkpoint file's exact content."""
    units_dir = Path(units_dir)
    marker = require_complete(units_dir, "units", remedy=UNITS_REMEDY)
    utterances = c_sorted(p.stem for p in (units_dir / "indices").glob("*.npy"))
    if not marker.matches(utterances):
        raise IncompleteOutputError(
            f"{units_dir}/indices holds {len(utterances)} utterances but its complete.json says {marker.count} "
            f"(the directory was changed after extraction); {UNITS_REMEDY}"
        )
    units = UnitsDir(units_dir, marker, utterances)
    if checkpoint is not None and marker.info.get("checkpoint_sha256") != checkpoint["checkpoint_sha256"]:
        raise MismatchError(
            f"units in {units_dir} were extracted with {describe_checkpoint(marker.info)}, not with the evaluated "
            f"checkpoint {describe_checkpoint(checkpoint)} (different file content); {UNITS_REMEDY} with this checkpoint"
        )
    return units


def read_unit_arrays(units: UnitsDir, sub: str) -> dict[str, np.ndarray]:
    """``utt -> array`` of ``<units>/<sub>/<utt>.npy`` for every utterance of the marker,
    refusing missing files and NaN/Inf (named)."""
    arrays = {}
    for utt in units.utterances:
        path = units.path / sub / f"{utt}.npy"
        if not path.is_file():
            raise IncompleteOutputError(f"{path} is missing although {units.path} is marked complete; {UNITS_REMEDY}")
        array = np.load(path, allow_pickle=False)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise NonFiniteOutputError(f"{path} holds NaN/Inf (utterance {utt}); the model diverged: "
                                       "extract with an earlier checkpoint")
        arrays[utt] = array
    return arrays


def item_files(items_path: str | Path) -> list[str]:
    """The ``#file`` column of an ABX item file (every line after the header), in order."""
    with open(items_path, encoding="utf-8") as f:
        lines = f.read().splitlines()[1:]
    return [line.split(maxsplit=1)[0] for line in lines if line.strip()]


def check_utterances(expected: Iterable[str], found: Iterable[str], left_out: Iterable[str], expected_from: str,
                     found_in: str) -> set[str]:
    """Fail with counts unless every utterance of ``expected`` is in ``found`` or was knowingly
    ``left_out`` by the producer of ``found``; returns the left-out ones ``expected`` names."""
    expected, found = set(expected), set(found)
    dropped = expected & (set(left_out) - found)
    missing = c_sorted(expected - found - dropped)
    if missing:
        raise MismatchError(
            f"{len(missing)} of the {len(expected)} utterances of {expected_from} are not in {found_in} "
            f"(e.g. {', '.join(missing[:3])}): use inputs made from the same set"
        )
    return dropped


def items_for(items_path: str | Path, found: Iterable[str], left_out: Iterable[str], found_in: str,
              out_path: str | Path) -> tuple[Path, int]:
    """The item file to score on features/units with utterances ``found``: ``items_path``
    itself, or, when some of its files were knowingly ``left_out`` upstream (unusable audio),
    a copy without their items at ``out_path``. Any other file of the item file missing from
    ``found`` is a :class:`MismatchError` with counts. Returns (path, items dropped)."""
    items_path = Path(items_path)
    if not items_path.is_file():
        raise EvalInputError(f"{items_path}: no such item file (pass --items data/<set>/items)")
    dropped_files = check_utterances(item_files(items_path), found, left_out, f"the item file {items_path}", found_in)
    if not dropped_files:
        return items_path, 0
    lines = items_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept, dropped = [lines[0]], 0
    for line in lines[1:]:
        if line.strip() and line.split(maxsplit=1)[0] in dropped_files:
            dropped += 1
        else:
            kept.append(line)
    out_path = Path(out_path)
    out_path.write_text("".join(kept), encoding="utf-8")
    return out_path, dropped
