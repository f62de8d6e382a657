"""``speechsq compute-feats``: a Kaldi data dir -> ``feats.scp`` + ``feats.ark`` (+ ``cmvn.npz``).

Files are processed in parallel (``--nj`` worker processes, each building the pipeline once)
and written in sorted utterance order, so the output does not depend on ``--nj``.
Utterances that cannot give features (silent, truncated, non-audio, too few frames, ...) are
skipped and listed with their reason in ``<out>/skipped``; ``feats.scp`` is then a subset of
``wav.scp``, and downstream code keys on ``feats.scp``.

Standardised pipelines (``standardize: true``, VCTK): without ``--cmvn-from`` the statistics
are computed on this set (use it for the training set only) in a first pass over a temporary
raw archive and saved as ``<out>/cmvn.npz``; other sets pass ``--cmvn-from feats/train/cmvn.npz``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from speechsq.data_prep.audio import AudioProblem
from speechsq.data_prep.kaldi_dir import DataDirError, KaldiDataDir
from speechsq.features.cmvn import Cmvn, RunningMoments
from speechsq.features.logmel import FeatureError, LogMelPipeline, build_pipeline, load_preprocessing_config
from speechsq.features.store import CMVN, SKIPPED, ArkWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extracted:
    utt: str
    feats: np.ndarray | None
    reason: str = ""
    detail: str = ""


@dataclass
class ComputeReport:
    out_dir: str
    written: int = 0
    frames: int = 0
    seconds_of_audio: float = 0.0
    wall_seconds: float = 0.0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    cmvn_path: str | None = None


_PIPELINE: LogMelPipeline | None = None


def _init_worker(cfg: dict) -> None:
    global _PIPELINE
    _PIPELINE = build_pipeline(cfg)


def _extract(item: tuple[str, str]) -> Extracted:
    utt, path = item
    try:
        feats = _PIPELINE(path)
    except (AudioProblem, FeatureError) as err:
        return Extracted(utt, None, getattr(err, "reason", "bad-signal"), getattr(err, "detail", str(err)))
    if not np.all(np.isfinite(feats)):  # defensive: never let NaN reach an archive
        return Extracted(utt, None, "non-finite-features", "NaN or inf in features")
    return Extracted(utt, feats)


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
) -> ComputeReport:
    start = time.perf_counter()
    cfg = preprocessing if not isinstance(preprocessing, str) else load_preprocessing_config(preprocessing)
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    pipeline = build_pipeline(cfg)  # validates the config before forking workers
    data = KaldiDataDir.read(data_dir)
    items = [(utt, data.wav_path(utt)) for utt in data.utterances]
    out_dir = Path(out_dir)
    report = ComputeReport(str(out_dir))

    cmvn = Cmvn.load(cmvn_from) if cmvn_from is not None else None
    if cmvn is not None and not pipeline.standardize:
        log.warning("--cmvn-from given but preprocessing %s does not standardise; applying it anyway", cfg["name"])
    compute_stats = pipeline.standardize and cmvn is None
    moments = RunningMoments(pipeline.n_mels) if compute_stats else None

    writer = ArkWriter(out_dir)
    raw_path = out_dir / "raw.ark.tmp"
    raw = open(raw_path, "wb") if compute_stats else None
    try:
        results = _extract_all(items, cfg, nj)
        for result in tqdm(results, total=len(items), desc=f"feats {Path(data_dir).name}", unit="utt",
                           disable=not progress):
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
            raise FeatureError(f"{data_dir}: no utterance gave features ({len(report.skipped)} skipped)")
        if compute_stats:
            raw.close()
            cmvn = moments.finalize()
            for utt, feats in kaldiio.load_ark(str(raw_path)):  # second pass: standardise
                writer.write(utt, cmvn.apply(feats))
            cmvn.save(out_dir / CMVN)
            report.cmvn_path = str(out_dir / CMVN)
        _write_skipped(out_dir / SKIPPED, report.skipped)
        OmegaConf.save(OmegaConf.create(cfg), out_dir / "preprocessing.yaml")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if raw is not None:
            raw.close()
        raw_path.unlink(missing_ok=True)
    report.written = len(writer.offsets)
    report.seconds_of_audio = report.frames * pipeline.frame_shift
    report.wall_seconds = time.perf_counter() - start
    return report


def _write_skipped(path: Path, skipped: Iterable[tuple[str, str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{u} {r} {d}\n" for u, r, d in skipped), encoding="utf-8")
    os.replace(tmp, path)


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
    parser.add_argument("--nj", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="worker processes (default: min(4, cores))")
    parser.add_argument("--cmvn-from", default=None,
                        help="apply these statistics (feats/train/cmvn.npz) instead of computing them")
    parser.add_argument("--min-frames", type=int, default=1,
                        help="skip utterances with fewer frames (34 = one training segment of 32 + 2 context)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. n_mels=40")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_preprocessing_config(args.preprocessing, args.overrides)
    try:
        report = compute_features(args.data_dir, args.out, cfg, nj=args.nj, cmvn_from=args.cmvn_from,
                                  min_frames=args.min_frames)
    except (DataDirError, FeatureError, FileNotFoundError) as err:
        log.error("%s", err)
        return 1
    rtf = report.wall_seconds / max(report.seconds_of_audio, 1e-9)
    print(f"{report.written} utterances, {report.frames} frames ({report.seconds_of_audio / 3600:.2f} h) "
          f"in {report.wall_seconds:.1f} s (real-time factor {rtf:.4f}), {len(report.skipped)} skipped -> "
          f"{Path(args.out) / 'feats.scp'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
