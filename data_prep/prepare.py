"""``speechsq prepare-data``: corpus on disk -> Kaldi data dirs + a data-prep report.

Each set of the corpus layout becomes ``<out>/<set>/`` (wav.scp, utt2spk, spk2utt, text when
transcripts exist, and the ABX ``items``/``ali`` files when the corpus has them). Every file that
cannot be used is left out and listed with its reason in ``<out>/prep_report.json``:
``bad-name``, ``not-audio``, ``truncated``, ``empty``, ``stereo``, ``wrong-sample-rate``,
``silent``, ``non-finite``, and ``too-short`` (training sets only: an utterance must give one
training segment of ``--segment-frames`` frames, 32 + 2 context in the reference recipes).

A skipped file is skipped everywhere: its lines in the set's ``ali`` and ``items`` files are
dropped too (counted per set in the report as ``dropped_lines``), so the data dir validates
and no ABX item refers to audio that is not there.

Each data dir is built beside its final place and renamed into place complete, with its
completion marker (``complete.json``, kind ``data_dir``, keys = utterances; see
:mod:`speechsq.data_prep.staging`): a crash or a full disk leaves the previous data dir or
none, never a half-written one. A set with no usable file removes its old data dir (it would
be stale) and makes the command fail. ``prep_report.json`` is written in every case, with the
``error`` that stopped the run if one did.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from speechsq.completion import MARKER, atomic_write_json, mark_complete
from speechsq.data_prep import vctk, zerospeech19  # noqa: F401  (register the layouts)
from speechsq.data_prep.argtypes import positive_int
from speechsq.data_prep.audio import AudioProblem, inspect_wav, load_wav
from speechsq.data_prep.corpus import CORPORA, CorpusLayout, SkippedFile, SubsetListing
from speechsq.data_prep.kaldi_dir import DataDirError, KaldiDataDir, validate_data_dir
from speechsq.data_prep.staging import remove_directory, staged_directory

log = logging.getLogger(__name__)

SEGMENT_FRAMES = 34  # 32-frame training segments + 2 frames of context (van Niekerk et al., 2020)


@dataclass
class SubsetReport:
    name: str
    utterances: int = 0
    speakers: int = 0
    hours: float = 0.0
    skipped: list[SkippedFile] = field(default_factory=list)
    # lines of the set's extra files (``ali``, ``items``) dropped because their utterance was skipped
    dropped_lines: dict[str, int] = field(default_factory=dict)
    written: bool = False


@dataclass
class PrepReport:
    corpus: str
    root: str
    out: str
    subsets: dict[str, SubsetReport] = field(default_factory=dict)
    error: str | None = None  # what stopped the run, if something did

    def skipped_reasons(self) -> Counter:
        return Counter(s.reason for sub in self.subsets.values() for s in sub.skipped)

    def write(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


def min_training_duration(layout: CorpusLayout, segment_frames: int) -> float:
    """Shortest signal giving ``segment_frames`` centred STFT frames (1 + len // hop >= n)."""
    return (segment_frames - 1) * layout.frame_shift


def check_file(path: str, layout: CorpusLayout, min_duration: float, read_samples: bool) -> float:
    """Return the duration in seconds or raise :class:`AudioProblem`."""
    info = inspect_wav(path, expected_sample_rate=layout.sample_rate, min_duration=min_duration)
    if read_samples:
        load_wav(path, expected_sample_rate=layout.sample_rate)  # silent, non-finite, short reads
    return info.duration


DATA_DIR_FILES = ("wav.scp", "utt2spk", "spk2utt", MARKER)


def looks_like_data_dir(path: Path) -> bool:
    """An existing directory prepare-data may replace: it holds a data dir's own files."""
    return any((path / name).is_file() for name in DATA_DIR_FILES)


def copy_lines_of(src: str | Path, dest: Path, keep: set[str], header: bool) -> int:
    """Copy ``src`` to ``dest`` keeping only lines whose first field is a kept utterance
    (and the first line when ``header``); returns the number of lines dropped. Lines are
    copied byte for byte, so the times keep their original precision."""
    dropped = 0
    with open(src, encoding="utf-8") as f, open(dest, "w", encoding="utf-8") as out:
        for lineno, line in enumerate(f):
            fields = line.split(maxsplit=1)
            if (header and lineno == 0) or (fields and fields[0] in keep):
                out.write(line)
            elif fields:
                dropped += 1
    return dropped


def prepare_subset(listing: SubsetListing, layout: CorpusLayout, out_dir: Path,
                   segment_frames: int, read_samples: bool, corpus: str = "", root: str = "") -> SubsetReport:
    report = SubsetReport(listing.name, skipped=list(listing.skipped))
    min_duration = min_training_duration(layout, segment_frames) if listing.is_training else 0.0
    wav_scp, utt2spk, text = {}, {}, {}
    seconds = 0.0
    for item in tqdm(listing.files, desc=f"check {listing.name}", unit="file", leave=False):
        try:
            seconds += check_file(item.path, layout, min_duration, read_samples)
        except AudioProblem as err:
            report.skipped.append(SkippedFile(item.path, err.reason, err.detail))
            continue
        wav_scp[item.utt], utt2spk[item.utt] = item.path, item.speaker
        if item.text is not None:
            text[item.utt] = item.text
    for skipped in report.skipped:
        log.warning("skip %s: %s %s", skipped.path, skipped.reason, skipped.detail)
    report.utterances, report.speakers, report.hours = len(utt2spk), len(set(utt2spk.values())), seconds / 3600
    if not utt2spk:
        log.error("set %s: no usable utterances; removing any old %s", listing.name, out_dir)
        remove_directory(out_dir)  # an old data dir of this set would no longer match the corpus
        return report
    kept = set(utt2spk)
    with staged_directory(out_dir, looks_like_data_dir, what="Kaldi data") as staging:
        KaldiDataDir(wav_scp, utt2spk, text or None).write(staging)
        for dest, src in listing.extras.items():
            report.dropped_lines[dest] = copy_lines_of(src, staging / dest, kept, header=dest == "items")
            if report.dropped_lines[dest]:
                log.warning("set %s: dropped %d lines of %s whose utterance is not in the set",
                            listing.name, report.dropped_lines[dest], dest)
        validation = validate_data_dir(staging)
        if not validation.ok:  # our own output must validate; anything else is a bug
            raise RuntimeError(f"prepared data dir {out_dir} does not validate:\n{validation}")
        mark_complete(staging, "data_dir", kept, producer="speechsq prepare-data", corpus=corpus,
                      root=str(root), set=listing.name, skipped=len(report.skipped),
                      dropped_lines=report.dropped_lines)
    report.written = True
    return report


def prepare(corpus: str, root: str | Path, out: str | Path, segment_frames: int = SEGMENT_FRAMES,
            read_samples: bool = True) -> PrepReport:
    """Write one data dir per set of the corpus under ``out`` and ``out/prep_report.json``
    (always, with ``error`` set when an exception stops the run)."""
    layout = CORPORA.get(corpus)()
    out = Path(out)
    report = PrepReport(corpus, str(root), str(out))
    try:
        listings = layout.list_subsets(Path(root))
        for name, listing in listings.items():
            report.subsets[name] = prepare_subset(listing, layout, out / name, segment_frames, read_samples,
                                                  corpus, str(root))
            sub = report.subsets[name]
            log.info("%s: %d utterances, %d speakers, %.2f h, %d skipped", name, sub.utterances, sub.speakers,
                     sub.hours, len(sub.skipped))
    except BaseException as err:
        report.error = f"{type(err).__name__}: {err}"
        raise
    finally:
        out.mkdir(parents=True, exist_ok=True)
        report.write(out / "prep_report.json")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="speechsq prepare-data",
        description="Make Kaldi data dirs (<out>/<set>/wav.scp, utt2spk, spk2utt, ...) from a corpus on disk "
        "and write <out>/prep_report.json listing every skipped file with its reason. "
        "zerospeech19 sets: train (voice+unit), parallel (train/parallel/voice), parallel_source, test. "
        "vctk sets: train, test (deterministic 90/10 split of each speaker's utterances).",
    )
    parser.add_argument("--corpus", required=True, choices=CORPORA.names(), help="corpus layout")
    parser.add_argument("--root", required=True,
                        help="corpus root: ZeroSpeech 2019 english/ folder, or the VCTK 0.80 folder with wav48/")
    parser.add_argument("--out", default="data", help="output folder for the data dirs (default: data)")
    parser.add_argument("--segment-frames", type=positive_int, default=SEGMENT_FRAMES,
                        help="training utterances shorter than this many feature frames are skipped (default 34)")
    parser.add_argument("--header-only", action="store_true",
                        help="only read wav headers (faster; silent files are then caught by compute-feats)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = prepare(args.corpus, args.root, args.out, args.segment_frames, read_samples=not args.header_only)
    reasons = report.skipped_reasons()
    print(f"{'set':<16} {'utts':>7} {'spks':>5} {'hours':>7} {'skipped':>8}")
    for name, sub in report.subsets.items():
        print(f"{name:<16} {sub.utterances:>7} {sub.speakers:>5} {sub.hours:>7.2f} {len(sub.skipped):>8}")
    if reasons:
        print("skipped: " + ", ".join(f"{r}={n}" for r, n in sorted(reasons.items())))
    report_path = Path(args.out) / "prep_report.json"
    print(f"report: {report_path}")
    empty = [name for name, sub in report.subsets.items() if not sub.written]
    if empty:
        raise DataDirError(f"no usable file in set(s) {', '.join(empty)} of {args.root}; "
                           f"every file was skipped (reasons in {report_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
