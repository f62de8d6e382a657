"""Phone alignments and ABX item files (the libri-light / ZeroSpeech 2021 format).

``ali`` (one line per phone segment, silences included, sorted by utterance then time)::

    <utt> <onset-s> <offset-s> <phone>

``items`` (libri-light ABX item file, what ``zerospeech-libriabx2`` reads)::

    #file onset offset #phone prev-phone next-phone speaker
    S101_0000000001 0.1350 0.2120 aI m k S101

One item per phone token whose two neighbours are phones too: silences are never items, and
the first and last phone of each file (no left/right context) are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speechsq.data_prep.kaldi_dir import c_sorted
from speechsq.errors import SpeechsqError

ITEM_HEADER = "#file onset offset #phone prev-phone next-phone speaker"
SILENCE = "SIL"


class AlignmentError(SpeechsqError, ValueError):
    """Malformed alignment or item file."""


@dataclass(frozen=True)
class PhoneSegment:
    onset: float
    offset: float
    phone: str

    @property
    def is_silence(self) -> bool:
        return self.phone == SILENCE


@dataclass(frozen=True)
class ABXItem:
    file: str
    onset: float
    offset: float
    phone: str
    prev_phone: str
    next_phone: str
    speaker: str


def write_alignments(path: str | Path, alignments: dict[str, list[PhoneSegment]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for utt in c_sorted(alignments):
            for seg in alignments[utt]:
                f.write(f"{utt} {seg.onset:.4f} {seg.offset:.4f} {seg.phone}\n")


def read_alignments(path: str | Path) -> dict[str, list[PhoneSegment]]:
    alignments: dict[str, list[PhoneSegment]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 4:
                raise AlignmentError(f"{path}:{lineno}: expected '<utt> <onset> <offset> <phone>'")
            try:
                seg = PhoneSegment(float(parts[1]), float(parts[2]), parts[3])
            except ValueError:
                raise AlignmentError(f"{path}:{lineno}: times must be numbers") from None
            if not 0 <= seg.onset < seg.offset:
                raise AlignmentError(f"{path}:{lineno}: bad segment times {seg.onset} {seg.offset}")
            alignments.setdefault(parts[0], []).append(seg)
    return alignments


def items_from_alignments(alignments: dict[str, list[PhoneSegment]], utt2spk: dict[str, str]) -> list[ABXItem]:
    """One item per phone whose immediate neighbours are both (non-silence) phones."""
    items = []
    for utt in c_sorted(alignments):
        segs = alignments[utt]
        for prev, seg, nxt in zip(segs, segs[1:], segs[2:]):
            if seg.is_silence or prev.is_silence or nxt.is_silence:
                continue
            items.append(ABXItem(utt, seg.onset, seg.offset, seg.phone, prev.phone, nxt.phone, utt2spk[utt]))
    return items


def write_items(path: str | Path, items: list[ABXItem]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(ITEM_HEADER + "\n")
        for it in items:
            f.write(f"{it.file} {it.onset:.4f} {it.offset:.4f} {it.phone} {it.prev_phone} {it.next_phone} {it.speaker}\n")


def read_items(path: str | Path) -> list[ABXItem]:
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip()
        if header.split() != ITEM_HEADER.split():
            raise AlignmentError(f"{path}: header must be {ITEM_HEADER!r}, got {header!r}")
        items = []
        for lineno, line in enumerate(f, 2):
            parts = line.split()
            if len(parts) != 7:
                raise AlignmentError(f"{path}:{lineno}: expected 7 columns, got {len(parts)}")
            try:
                onset, offset = float(parts[1]), float(parts[2])
            except ValueError:
                raise AlignmentError(f"{path}:{lineno}: times must be numbers") from None
            items.append(ABXItem(parts[0], onset, offset, parts[3], parts[4], parts[5], parts[6]))
    return items
