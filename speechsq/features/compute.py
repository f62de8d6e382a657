"""``speechsq compute-feats``: a Kaldi data dir -> ``feats.scp`` + ``feats.ark`` (+ ``cmvn.npz``).

Files are processed in parallel (``--nj`` worker processes, each building the pipeline once)
and written in sorted utterance order, so the output does not depend on ``--nj``.
Utterances that cannot give features (silent, truncated, non-audio, too few frames, ...) are
skipped and listed with their reason in ``<out>/skipped``; ``feats.scp`` is then a subset of
``wav.scp``, and downstream code keys on ``feats.scp``.

Standardised pipelines (``standardize: true``, VCTK): without ``--cmvn-from`` the statistics
are computed on this set (use it for the training set only) in a first pass over a temporary
raw archive and saved as ``<out>/cmvn.npz``; other sets pass ``--cmvn-from feats/train/cmvn.npz``.

Audio in another layout than the pipeline's is converted, never silently: a file at a sample
rate the pipeline does not expect (its own, or the corpus rate it resamples by design) is
resampled with a log line naming it, a multi-channel file is mixed down with one, and the
summary line and ``<out>/audio_report.json`` count the files by original sample rate and
channel count. ``--strict-sample-rate`` refuses such input instead, before any work.

The output directory is written as :mod:`speechsq.features.store` describes: temporary
names, renamed into place at the end with the ``features`` completion marker
(``complete.json``: utterances of feats.scp, the data dir, counts); an existing complete
directory stays usable until then, and a full disk leaves it untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from speechsq.completion import read_completion
from speechsq.data_prep.argtypes import positive_int
from speechsq.data_prep.audio import AudioProblem, AudioSummary, Conversion, refuse_other_rates
from speechsq.data_prep.kaldi_dir import KaldiDataDir
from speechsq.errors import DiskFullError, is_disk_full
from speechsq.features.cmvn import Cmvn, RunningMoments
from speechsq.features.logmel import FeatureError, LogMelPipeline, build_pipeline, load_preprocessing_config
from speechsq.features.store import AUDIO_REPORT, CMVN, PREPROCESSING, SKIPPED, ArkWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extracted:
    utt: str
    feats: np.ndarray | None
    reason: str = ""
    detail: str = ""
    conversion: Conversion | None = None


@dataclass
class ComputeReport:
    out_dir: str
    written: int = 0
    frames: int = 0
    seconds_of_audio: float = 0.0
    wall_seconds: float = 0.0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    cmvn_path: str | None = None
    audio: AudioSummary | None = None


_PIPELINE: LogMelPipeline | None = None


def _init_worker(cfg: dict) -> None:
    global _PIPELINE
    _PIPELINE = build_pipeline(cfg)


def _extract(item: tuple[str, str]) -> Extracted:
    utt, path = item
    try:
        result = _PIPELINE.featurize(path)
    except (AudioProblem, FeatureError) as err:
        return Extracted(utt, None, getattr(err, "reason", "bad-signal"), getattr(err, "detail", str(err)))
    if not np.all(np.isfinite(result.feats)):  # defensive: never let NaN reach an archive
        return Extracted(utt, None, "non-finite-features", "NaN or inf in features", result.conversion)
    return Extracted(utt, result.feats, conversion=result.conversion)


def _extract_all(items: list[tuple[str, str]], cfg: dict, nj: int) -> Iterator[Extracted]:
    if nj <= 1:
        _init_worker(cfg)
        yield from map(_extract, items)
        return
    chunksize = max(1, min(16, len(items) // (4 * nj)))
    with multiprocessing.get_context("fork").Pool(nj, initializer=_init_worker, initargs=(cfg,)) as pool:
        yield from pool.imap(_extract, items, chunksize=chunksize)


def compute_features(
    data_dir: str | Path,
    out_dir: str | Path,
    preprocessing: DictConfig | dict | str = "zerospeech19",
    nj: int = 1,
    cmvn_from: str | Path | None = None,
    min_frames: int = 1,
    progress: bool = True,
    strict_sample_rate: bool = False,
) -> ComputeReport:
    """Features of every utterance of ``data_dir`` into ``out_dir`` (see the module docstring)."""
    start = time.perf_counter()
    cfg = preprocessing if not isinstance(preprocessing, str) else load_preprocessing_config(preprocessing)
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    pipeline = build_pipeline(cfg)  # validates the config before forking workers
    data = KaldiDataDir.read(data_dir)
    _check_data_dir_marker(data)
    items = [(utt, data.wav_path(utt)) for utt in data.utterances]
    if strict_sample_rate:
        refuse_other_rates({utt: Path(path) for utt, path in items}, pipeline.expected_rates, f"{data_dir}/wav.scp")
    out_dir = Path(out_dir)
    report = ComputeReport(str(out_dir), audio=AudioSummary(pipeline.sample_rate, tuple(sorted(pipeline.expected_rates))))

    cmvn = Cmvn.load(cmvn_from) if cmvn_from is not None else None
    if cmvn is not None and not pipeline.standardize:
        log.warning("--cmvn-from given but preprocessing %s does not standardise; applying it anyway", cfg["name"])
    compute_stats = pipeline.standardize and cmvn is None
    moments = RunningMoments(pipeline.n_mels) if compute_stats else None

    writer = ArkWriter(out_dir)
    raw_path = out_dir / "raw.ark.tmp"
    raw = None
    try:
        raw = open(raw_path, "wb") if compute_stats else None
        results = _extract_all(items, cfg, nj)
        for result in tqdm(results, total=len(items), desc=f"feats {Path(data_dir).name}", unit="utt",
                           disable=not progress):
            if result.conversion is not None:
                note = report.audio.add(result.utt, result.conversion)
                if note:
                    log.warning("%s (%s): %s", result.utt, data.wav_scp[result.utt], note)
            if result.feats is not None and len(result.feats) < min_frames:
                result = Extracted(result.utt, None, "too-short", f"{len(result.feats)} frames < {min_frames}")
            if result.feats is None:
                report.skipped.append((result.utt, result.reason, result.detail))
                log.warning("skip %s: %s %s", result.utt, result.reason, result.detail)
                continue
            report.frames += len(result.feats)
            if compute_stats:
                moments.update(result.feats)
                kaldiio.save_ark(raw, {result.utt: result.feats})
            else:
                writer.write(result.utt, cmvn.apply(result.feats) if cmvn is not None else result.feats)
        if not report.frames:
            raise FeatureError(f"{data_dir}: no utterance gave features ({len(report.skipped)} skipped: "
                               f"{_reason_counts(report.skipped)}); {out_dir} was left as it was")
        if compute_stats:
            raw.close()
            cmvn = moments.finalize()
            for utt, feats in kaldiio.load_ark(str(raw_path)):  # second pass: standardise
                writer.write(utt, cmvn.apply(feats))
            cmvn.save(writer.staged_path(CMVN))
            report.cmvn_path = str(out_dir / CMVN)
        writer.stage_text(SKIPPED, "".join(f"{u} {r} {d}\n" for u, r, d in report.skipped))
        writer.stage_text(PREPROCESSING, OmegaConf.to_yaml(OmegaConf.create(cfg)))
        writer.stage_text(AUDIO_REPORT, json.dumps(report.audio.to_dict(), indent=2) + "\n")
        writer.commit(
            data_dir=str(Path(data_dir).resolve()), data_dir_utterances=len(items), skipped=len(report.skipped),
            preprocessing=str(cfg.get("name")), cmvn_from=None if cmvn_from is None else str(Path(cmvn_from).resolve()),
            sample_rates=report.audio.to_dict()["by_sample_rate"],
        )
    except BaseException as err:
        writer.abort()
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(raw_path if raw is not None and not raw.closed else out_dir) from err
        raise
    finally:
        if raw is not None:
            try:
                raw.close()
            except OSError:
                pass  # a full disk while flushing: the file is removed next
        raw_path.unlink(missing_ok=True)
    report.written = len(writer.offsets)
    report.seconds_of_audio = report.frames * pipeline.frame_shift
    report.wall_seconds = time.perf_counter() - start
    return report


def _reason_counts(skipped: Iterable[tuple[str, str, str]]) -> str:
    counts = Counter(reason for _, reason, _ in skipped)
    return ", ".join(f"{reason}={n}" for reason, n in sorted(counts.items())) or "none"


def _check_data_dir_marker(data: KaldiDataDir) -> None:
    """Data dirs from prepare-data carry a marker; say so when it no longer matches (users may
    edit data dirs by hand, as in Kaldi, so this is a warning)."""
    marker = read_completion(data.path) if data.path is not None else None
    if marker is None:
        log.info("%s has no completion marker (not written by prepare-data); using it as it is", data.path)
    elif not marker.matches(data.utt2spk):
        log.warning("%s: utt2spk has %d utterances, its complete.json %d: the data dir was edited after "
                    "prepare-data", data.path, len(data.utt2spk), marker.count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="speechsq compute-feats",
        description="Compute log-Mel features (SQ-VAE App. E.2.1) for a Kaldi data dir: writes <out>/feats.scp, "
        "feats.ark ((frames, n_mels) float32 per utterance), utt2num_frames, skipped, preprocessing.yaml and, "
        "for standardised pipelines, cmvn.npz (training-set statistics).",
    )
    parser.add_argument("--data-dir", required=True, help="Kaldi data dir with wav.scp and utt2spk")
    parser.add_argument("--out", required=True, help="output feature dir, e.g. feats/train")
    parser.add_argument("--preprocessing", default="zerospeech19",
                        help="preprocessing config name (zerospeech19, vctk) or path to a yaml (default zerospeech19)")
    parser.add_argument("--nj", type=positive_int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="worker processes (default: min(4, cores))")
    parser.add_argument("--cmvn-from", default=None,
                        help="apply these statistics (feats/train/cmvn.npz) instead of computing them")
    parser.add_argument("--min-frames", type=positive_int, default=1,
                        help="skip utterances with fewer frames (34 = one training segment of 32 + 2 context)")
    parser.add_argument("--strict-sample-rate", action="store_true",
                        help="refuse (exit 2, before any work) audio at a sample rate the pipeline does not expect, "
                        "instead of resampling it with a note")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. n_mels=40")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_preprocessing_config(args.preprocessing, args.overrides)
    report = compute_features(args.data_dir, args.out, cfg, nj=args.nj, cmvn_from=args.cmvn_from,
                              min_frames=args.min_frames, strict_sample_rate=args.strict_sample_rate)
    rtf = report.wall_seconds / max(report.seconds_of_audio, 1e-9)
    skipped = f"{len(report.skipped)} skipped" + (f" ({_reason_counts(report.skipped)})" if report.skipped else "")
    print(f"{report.written} utterances, {report.frames} frames ({report.seconds_of_audio / 3600:.2f} h) "
          f"in {report.wall_seconds:.1f} s (real-time factor {rtf:.4f}), {skipped} -> "
          f"{Path(args.out) / 'feats.scp'}")
    print(f"{report.audio.describe()} (details: {Path(args.out) / AUDIO_REPORT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
