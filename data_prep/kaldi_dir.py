"""Kaldi data directories: read, write and validate.

A data dir holds space-separated text files, each sorted in C-locale byte order (what
``LC_ALL=C sort`` produces and what Kaldi's ``utils/validate_data_dir.sh`` demands):

* ``wav.scp``   ``<recording-id> <path or command |>``
* ``utt2spk``   ``<utt> <spk>``; utterance ids start with their speaker id, so that sorting by
  utterance and sorting by speaker agree (Kaldi's rule)
* ``spk2utt``   ``<spk> <utt> <utt> ...`` (the inverse of utt2spk, utterances sorted)
* optional ``text`` (``<utt> <transcript>``), ``segments`` (``<utt> <rec> <start> <end>``)
* optional, for ABX test sets: ``items`` (libri-light ABX item file) and ``ali`` (phone
  alignments, see :mod:`speechsq.data_prep.alignments`)

Users can bring their own data dirs; everything downstream only needs :class:`KaldiDataDir`.
``speechsq validate-data-dir data/train`` prints the problems found and exits non-zero on errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)


class DataDirError(SpeechsqError, ValueError):
    """A data dir cannot be read (missing file, malformed line)."""


def c_sorted(keys):
    """Sort strings in C-locale order (byte order of their UTF-8 encoding)."""
    return sorted(keys, key=lambda s: s.encode("utf-8"))


@dataclass(frozen=True)
class Segment:
    recording: str
    start: float
    end: float


@dataclass
class KaldiDataDir:
    """The contents of one data dir, keyed by utterance (or recording for ``wav_scp``)."""

    wav_scp: dict[str, str]
    utt2spk: dict[str, str]
    text: dict[str, str] | None = None
    segments: dict[str, Segment] | None = None
    path: Path | None = field(default=None, compare=False)

    @property
    def utterances(self) -> list[str]:
        return c_sorted(self.utt2spk)

    @property
    def speakers(self) -> list[str]:
        return c_sorted(set(self.utt2spk.values()))

    @property
    def spk2utt(self) -> dict[str, list[str]]:
        inverse: dict[str, list[str]] = {}
        for utt in self.utterances:
            inverse.setdefault(self.utt2spk[utt], []).append(utt)
        return {spk: inverse[spk] for spk in c_sorted(inverse)}

    def wav_path(self, utt: str) -> str:
        """The wav path of an unsegmented utterance (commands/pipes are not supported here)."""
        if self.segments is not None:
            raise DataDirError(f"{utt}: data dir has segments; read the recording and cut it")
        value = self.wav_scp[utt]
        if value.rstrip().endswith("|"):
            raise DataDirError(f"{utt}: piped wav.scp entries are not supported ({value!r})")
        return value

    # ------------------------------------------------------------------ write
    def write(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_table(directory / "wav.scp", self.wav_scp)
        _write_table(directory / "utt2spk", self.utt2spk)
        _write_table(directory / "spk2utt", {k: " ".join(v) for k, v in self.spk2utt.items()})
        if self.text is not None:
            _write_table(directory / "text", self.text)
        if self.segments is not None:
            _write_table(
                directory / "segments",
                {u: f"{s.recording} {s.start:.3f} {s.end:.3f}" for u, s in self.segments.items()},
            )
        self.path = directory
        return directory

    # ------------------------------------------------------------------- read
    @classmethod
    def read(cls, directory: str | Path) -> "KaldiDataDir":
        directory = Path(directory)
        if not directory.is_dir():
            raise DataDirError(f"{directory}: no such data directory")
        for required in ("wav.scp", "utt2spk"):
            if not (directory / required).is_file():
                raise DataDirError(f"{directory}: missing {required}")
        wav_scp = read_table(directory / "wav.scp")
        utt2spk = read_table(directory / "utt2spk")
        text = read_table(directory / "text", allow_empty_value=True) if (directory / "text").is_file() else None
        segments = None
        if (directory / "segments").is_file():
            segments = {}
            for utt, rest in read_table(directory / "segments").items():
                parts = rest.split()
                if len(parts) != 3:
                    raise DataDirError(f"{directory / 'segments'}: {utt}: expected '<rec> <start> <end>'")
                segments[utt] = Segment(parts[0], float(parts[1]), float(parts[2]))
        return cls(wav_scp, utt2spk, text, segments, path=directory)


def data_dir_utterances(directory: str | Path) -> list[str]:
    """The utterances of a data dir (its ``utt2spk``), C-sorted; a clear error when the
    directory or its utt2spk is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataDirError(f"{directory}: no such data directory")
    if not (directory / "utt2spk").is_file():
        raise DataDirError(f"{directory}: missing utt2spk (not a Kaldi data dir)")
    return c_sorted(read_table(directory / "utt2spk"))


def _write_table(path: Path, table: dict[str, str]) -> None:
    """Write ``key value`` lines in C order, atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for key in c_sorted(table):
            value = table[key]
            if not key or any(c.isspace() for c in key):
                raise DataDirError(f"{path.name}: invalid key {key!r} (empty or contains whitespace)")
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")
    os.replace(tmp, path)


def read_table(path: str | Path, allow_empty_value: bool = False) -> dict[str, str]:
    """Read ``key value...`` lines into a dict (value = rest of the line); duplicate keys are errors."""
    table, _ = _read_table_with_order(Path(path), allow_empty_value)
    return table


def _read_table_with_order(path: Path, allow_empty_value: bool = False) -> tuple[dict[str, str], list[str]]:
    table: dict[str, str] = {}
    order: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                raise DataDirError(f"{path}:{lineno}: empty line")
            parts = line.split(maxsplit=1)
            if len(parts) == 1 and not allow_empty_value:
                raise DataDirError(f"{path}:{lineno}: expected '<key> <value>', got {line!r}")
            key = parts[0]
            if key in table:
                raise DataDirError(f"{path}:{lineno}: duplicate key {key!r}")
            table[key] = parts[1].strip() if len(parts) > 1 else ""
            order.append(key)
    return table, order


# ---------------------------------------------------------------------------------- validation
@dataclass
class ValidationReport:
    directory: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        lines = [f"{self.directory}: {'OK' if self.ok else 'INVALID'} "
                 f"({len(self.errors)} errors, {len(self.warnings)} warnings)"]
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _sample(keys, n: int = 3) -> str:
    keys = c_sorted(keys)
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n})" if len(keys) > n else "")


def validate_data_dir(directory: str | Path, check_audio: bool = False) -> ValidationReport:
    """Check a data dir the way Kaldi's ``validate_data_dir.sh`` does; never raises on content."""
    directory = Path(directory)
    report = ValidationReport(str(directory))
    if not directory.is_dir():
        report.errors.append("no such directory")
        return report

    tables: dict[str, dict[str, str]] = {}
    for name in ("wav.scp", "utt2spk", "spk2utt", "text", "segments"):
        path = directory / name
        if not path.is_file():
            if name in ("wav.scp", "utt2spk", "spk2utt"):
                report.errors.append(f"missing {name}")
            continue
        try:
            table, order = _read_table_with_order(path, allow_empty_value=(name == "text"))
        except (DataDirError, UnicodeDecodeError) as err:
            report.errors.append(str(err))
            continue
        if order != c_sorted(order):
            report.errors.append(f"{name} is not sorted in C order (LC_ALL=C sort)")
        tables[name] = table
    if report.errors and ("utt2spk" not in tables or "wav.scp" not in tables):
        return report

    utt2spk, wav_scp = tables["utt2spk"], tables["wav.scp"]
    for utt, spk in utt2spk.items():
        if len(spk.split()) != 1:
            report.errors.append(f"utt2spk: {utt}: expected exactly one speaker, got {spk!r}")
        elif not utt.startswith(spk):
            report.warnings.append(f"utt2spk: utterance {utt} does not start with its speaker id {spk}")
    by_speaker = sorted(utt2spk, key=lambda u: (utt2spk[u].encode(), u.encode()))
    if by_speaker != c_sorted(utt2spk):
        report.errors.append("utt2spk: sorting by speaker and by utterance disagree "
                             "(make utterance ids start with the speaker id)")

    if "spk2utt" in tables:
        inverse: dict[str, list[str]] = {}
        for utt in c_sorted(utt2spk):
            inverse.setdefault(utt2spk[utt], []).append(utt)
        spk2utt = {k: v.split() for k, v in tables["spk2utt"].items()}
        if set(spk2utt) != set(inverse):
            report.errors.append(f"spk2utt and utt2spk list different speakers: "
                                 f"{_sample(set(spk2utt) ^ set(inverse))}")
        for spk in set(spk2utt) & set(inverse):
            if spk2utt[spk] != inverse[spk]:
                report.errors.append(f"spk2utt: {spk}: utterances differ from utt2spk or are unsorted")

    if "segments" in tables:
        seg_utts = set(tables["segments"])
        if seg_utts != set(utt2spk):
            report.errors.append(f"segments and utt2spk list different utterances: {_sample(seg_utts ^ set(utt2spk))}")
        for utt, rest in tables["segments"].items():
            parts = rest.split()
            try:
                rec, start, end = parts[0], float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                report.errors.append(f"segments: {utt}: expected '<rec> <start> <end>', got {rest!r}")
                continue
            if rec not in wav_scp:
                report.errors.append(f"segments: {utt}: recording {rec} not in wav.scp")
            if not 0 <= start < end:
                report.errors.append(f"segments: {utt}: bad times {start} {end}")
    elif set(wav_scp) != set(utt2spk):
        report.errors.append(f"wav.scp and utt2spk list different utterances: {_sample(set(wav_scp) ^ set(utt2spk))}")

    if "text" in tables:
        extra = set(tables["text"]) - set(utt2spk)
        if extra:
            report.errors.append(f"text has utterances not in utt2spk: {_sample(extra)}")
        missing = set(utt2spk) - set(tables["text"])
        if missing:
            report.warnings.append(f"text lacks {len(missing)} utterances: {_sample(missing)}")

    _validate_abx_files(directory, utt2spk, report)
    _validate_marker(directory, utt2spk, report)

    if check_audio:
        from speechsq.data_prep.audio import AudioProblem, inspect_wav

        for rec, value in wav_scp.items():
            if value.rstrip().endswith("|"):
                continue
            try:
                inspect_wav(value)
            except AudioProblem as err:
                report.errors.append(f"wav.scp: {rec}: {err.reason}: {err.detail}")
    return report


def _validate_marker(directory: Path, utt2spk: dict[str, str], report: ValidationReport) -> None:
    """A data dir written by prepare-data carries ``complete.json``; its utterances must still
    be those of utt2spk (a warning: editing a data dir by hand is legitimate in Kaldi)."""
    from speechsq.completion import read_completion
    from speechsq.errors import IncompleteOutputError

    try:
        marker = read_completion(directory)
    except IncompleteOutputError as err:
        report.warnings.append(str(err))
        return
    if marker is not None and not marker.matches(utt2spk):
        report.warnings.append(f"complete.json lists {marker.count} utterances, utt2spk {len(utt2spk)}: "
                               "the data dir was changed after it was written")


def _validate_abx_files(directory: Path, utt2spk: dict[str, str], report: ValidationReport) -> None:
    from speechsq.data_prep.alignments import AlignmentError, read_alignments, read_items

    if (directory / "ali").is_file():
        try:
            ali = read_alignments(directory / "ali")
        except AlignmentError as err:
            report.errors.append(str(err))
        else:
            extra = set(ali) - set(utt2spk)
            if extra:
                report.errors.append(f"ali has utterances not in utt2spk: {_sample(extra)}")
    if (directory / "items").is_file():
        try:
            items = read_items(directory / "items")
        except AlignmentError as err:
            report.errors.append(str(err))
        else:
            extra = {item.file for item in items} - set(utt2spk)
            if extra:
                report.errors.append(f"items refer to files not in utt2spk: {_sample(extra)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="speechsq validate-data-dir",
        description="Check Kaldi data dirs (wav.scp, utt2spk, spk2utt, optional text/segments/items/ali): "
        "C-order sorting, unique keys, utt2spk/spk2utt consistency, matching utterance sets. "
        "Exit status 1 if any directory has errors.",
    )
    parser.add_argument("data_dirs", nargs="+", help="data directories, e.g. data/train data/test")
    parser.add_argument("--check-audio", action="store_true",
                        help="also open every wav header (missing, truncated, stereo, ... files)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    missing = [d for d in args.data_dirs if not Path(d).is_dir()]
    if missing:
        raise DataDirError(f"{missing[0]}: no such data directory" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    ok = True
    for directory in args.data_dirs:
        report = validate_data_dir(directory, check_audio=args.check_audio)
        print(report)
        ok &= report.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
