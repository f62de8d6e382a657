"""What every corpus layout provides: a listing of its subsets, with skipped files and reasons.

A layout (``zerospeech19``, ``vctk``) only knows how a corpus is organised on disk: which
folders form which set, how a file name gives the speaker. Audio checks and data-dir writing
are shared (:mod:`speechsq.data_prep.prepare`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from speechsq.errors import SpeechsqError
from speechsq.registry import Registry


class CorpusLayoutError(SpeechsqError, FileNotFoundError):
    """The corpus root does not have the expected layout (e.g. a missing directory)."""


@dataclass(frozen=True)
class CorpusFile:
    utt: str
    speaker: str
    path: str
    text: str | None = None


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    detail: str = ""


@dataclass
class SubsetListing:
    """The files of one set (``train``, ``test``, ...) and the files refused while listing it."""

    name: str
    files: list[CorpusFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    # Training sets must yield at least one training segment per utterance.
    is_training: bool = False
    # Extra files (e.g. ABX ``items`` / ``ali``) copied into the data dir under these names.
    extras: dict[str, str] = field(default_factory=dict)


class CorpusLayout(ABC):
    name: str
    sample_rate: int
    frame_shift: float  # seconds per feature frame of this corpus's pipeline (for length checks)

    @abstractmethod
    def list_subsets(self, root: Path) -> dict[str, SubsetListing]:
        """Scan ``root``; raise :class:`CorpusLayoutError` if a required folder is missing."""


CORPORA: Registry[type[CorpusLayout]] = Registry("corpus layout")


def require_dir(path: Path, hint: str) -> Path:
    if not path.is_dir():
        raise CorpusLayoutError(f"missing directory {path} ({hint})")
    return path
