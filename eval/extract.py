"""Unit extraction: run a checkpoint over utterances and write units other tools can read.

    speechsq extract --checkpoint exp/x/checkpoints/last.pt \\
                     (--data-dir data/test --feats feats/test | --wav FILE_OR_FOLDER) \\
                     --out exp/x/units/test [--batch-size 32] [--zerospeech]

Utterances are encoded in batches (sorted by length, zero-padded, with their lengths, so
padding never changes a unit; see ``model.encode``). Written under ``--out``:

``indices/<utt>.npy``     int64 ``(T',)`` code index of every latent frame
``z_q/<utt>.npy``         float32 ``(T', code_dim)`` quantised codes (continuous)
``z_e/<utt>.npy``         float32 ``(T', input_dim)`` encoder output before quantisation
``units.txt``             ``<utt> u1 u2 ...`` deduplicated units (runs collapsed)
``durations.txt``         ``<utt> d1 d2 ...`` run lengths in latent frames (sum = T')
``extract.json``          checkpoint, frame shift of the units, counts, what was left out
``complete.json``         completion marker (kind ``units``), written last

and with ``--zerospeech`` the ZeroSpeech 2019 submission tree ``zerospeech/``:
``test/<utt>.txt`` one row per latent frame (the quantised code ``z_q`` by default, or
``--zerospeech-embedding onehot|index``), values separated by single spaces, the same
number of columns in every file; ``auxiliary_embedding1/<utt>.txt`` the encoder output
``z_e``; ``metadata.yaml``.

Inputs are checked before any work:

* ``--feats`` must be a complete feature dir (``speechsq.features.require_features``) and
  ``--data-dir`` a data dir; the utterances extracted are the data dir's. Utterances of the
  data dir that compute-feats skipped (listed in ``<feats>/skipped``) are left out and
  counted; any other data-dir utterance without features is an error with counts (features
  of another or an older set) unless ``--allow-missing``, which leaves them out, logged and
  counted in ``extract.json``. No utterance in common is always an error.
* ``--wav`` (alias ``--wav-dir``) takes one audio file or a folder, searched recursively:
  every format libsndfile reads, extensions in any case; two files with the same stem are
  an error naming both; an unusable file (silent, truncated, not audio) is skipped and listed
  in ``extract.json`` and the log; multi-channel files are mixed down and other sample rates
  resampled, each with a log line and counted (``--strict-sample-rate`` refuses other
  rates). Each file is read and featurised once.
* A model that outputs NaN/Inf for an utterance stops the extraction, naming it.

The directory is built beside ``--out`` and renamed into place complete
(:mod:`speechsq.data_prep.staging`): a failed or interrupted extraction leaves the previous
units (or none), never a partial units dir that ``evaluate``/``abx`` could score. The marker
records the checkpoint (path, SHA-256 of its content, step), the data dir and feature dir or
the audio input, the frame shift and what was left out, so consumers can tell where units
came from.

Python API: ``speechsq.load`` (:mod:`speechsq.api`); the older textlesslib-style wrapper::

    extractor = UnitExtractor.from_checkpoint("last.pt")
    out = extractor(waveform, sample_rate=16000)   # or extractor.from_features(feats)
    out["units"], out["durations"], out["frame_units"]   # sum(durations) == len(frame_units)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from speechsq.completion import MARKER, mark_complete
from speechsq.data_prep.argtypes import positive_int
from speechsq.data_prep.staging import staged_directory
from speechsq.eval.inputs import EvalInputError, NonFiniteOutputError

log = logging.getLogger(__name__)

ZEROSPEECH_EMBEDDINGS = ("codes", "onehot", "index")
DOWNSAMPLING = 2  # latent frames are twice the feature frame shift (SQ-VAE App. E.2.2)


@dataclass
class EncodedUtterance:
    utt: str
    indices: np.ndarray  # (T',) int64
    z_q: np.ndarray  # (T', code_dim)
    z_e: np.ndarray  # (T', input_dim)


def deduplicate(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse runs: ``[3, 3, 5, 3] -> units [3, 5, 3], durations [2, 1, 1]``."""
    indices = np.asarray(indices).reshape(-1)
    if indices.size == 0:
        return indices.astype(np.int64), np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], np.flatnonzero(indices[1:] != indices[:-1]) + 1])
    durations = np.diff(np.concatenate([starts, [indices.size]]))
    return indices[starts].astype(np.int64), durations.astype(np.int64)


def encode_batches(
    model,
    feats: Mapping[str, np.ndarray],
    utterances: list[str] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Iterator[EncodedUtterance]:
    """Encode ``utt -> (frames, n_mels)`` features in padded batches (sorted by length)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    utterances = list(feats) if utterances is None else list(utterances)
    lengths = {}
    for utt in utterances:
        matrix = feats[utt]
        if matrix.ndim != 2 or matrix.shape[0] < 1:
            raise ValueError(f"features of {utt!r} must be (frames >= 1, n_mels), got shape {matrix.shape}")
        lengths[utt] = matrix.shape[0]
    order = sorted(utterances, key=lambda u: lengths[u])
    for start in tqdm(range(0, len(order), batch_size), desc="extract", disable=not progress):
        names = order[start : start + batch_size]
        mats = [np.asarray(feats[u], dtype=np.float32) for u in names]
        width = max(m.shape[0] for m in mats)
        x = np.zeros((len(mats), mats[0].shape[1], width), dtype=np.float32)
        for row, m in enumerate(mats):
            x[row, :, : m.shape[0]] = m.T
        lens = torch.tensor([m.shape[0] for m in mats])
        with torch.no_grad():
            enc = model.encode(torch.from_numpy(x).to(device), lens.to(device))
        latent_lengths = enc["lengths"].cpu().tolist()
        indices = enc["indices"].cpu().numpy()
        z_q = enc["z_q"].float().cpu().numpy()
        z_e = enc["z_e"].float().cpu().numpy()
        for row, utt in enumerate(names):
            n = int(latent_lengths[row])
            yield EncodedUtterance(utt, indices[row, :n].astype(np.int64), z_q[row, :n], z_e[row, :n])


def _format_rows(matrix: np.ndarray, fmt: str) -> str:
    """Rows of values joined by single spaces, one line per row."""
    matrix = np.atleast_2d(matrix)
    return "".join(" ".join(fmt % v for v in row) + "\n" for row in matrix)


def zerospeech_rows(enc: EncodedUtterance, embedding: str, num_codes: int) -> tuple[np.ndarray, str]:
    if embedding == "codes":
        return enc.z_q, "%.6f"
    if embedding == "onehot":
        onehot = np.zeros((len(enc.indices), num_codes), dtype=np.int64)
        onehot[np.arange(len(enc.indices)), enc.indices] = 1
        return onehot, "%d"
    if embedding == "index":
        return enc.indices[:, None], "%d"
    raise ValueError(f"unknown ZeroSpeech embedding {embedding!r}; choose one of {ZEROSPEECH_EMBEDDINGS}")


METADATA_TEMPLATE = """author: {author}
affiliation: {affiliation}
description: {description}
open_source: true
train_set: {train_set}
gpu_budget: {gpu_budget}
parameters:
  frame_shift_s: {frame_shift}
  num_codes: {num_codes}
  test_embedding: {embedding}
  auxiliary_embedding1: encoder output before quantisation (z_e)
  checkpoint: {checkpoint}
"""


class UnitWriter:
    """Writes the per-utterance files and, optionally, the ZeroSpeech tree."""

    def __init__(self, out_dir: str | Path, zerospeech: bool = False, embedding: str = "codes", num_codes: int = 0):
        self.out = Path(out_dir)
        self.zerospeech = zerospeech
        self.embedding = embedding
        self.num_codes = num_codes
        for sub in ("indices", "z_q", "z_e"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        if zerospeech:
            for sub in ("test", "auxiliary_embedding1"):
                (self.out / "zerospeech" / sub).mkdir(parents=True, exist_ok=True)
        self.units: dict[str, np.ndarray] = {}
        self.durations: dict[str, np.ndarray] = {}
        self.widths: set[int] = set()

    def write(self, enc: EncodedUtterance) -> None:
        np.save(self.out / "indices" / f"{enc.utt}.npy", enc.indices)
        np.save(self.out / "z_q" / f"{enc.utt}.npy", enc.z_q.astype(np.float32))
        np.save(self.out / "z_e" / f"{enc.utt}.npy", enc.z_e.astype(np.float32))
        self.units[enc.utt], self.durations[enc.utt] = deduplicate(enc.indices)
        if self.zerospeech:
            rows, fmt = zerospeech_rows(enc, self.embedding, self.num_codes)
            self.widths.add(rows.shape[1])
            (self.out / "zerospeech" / "test" / f"{enc.utt}.txt").write_text(_format_rows(rows, fmt))
            (self.out / "zerospeech" / "auxiliary_embedding1" / f"{enc.utt}.txt").write_text(_format_rows(enc.z_e, "%.6f"))

    def finish(self, info: dict) -> None:
        for name, table in (("units.txt", self.units), ("durations.txt", self.durations)):
            lines = [f"{utt} {' '.join(map(str, table[utt].tolist()))}\n" for utt in sorted(table)]
            (self.out / name).write_text("".join(lines))
        if self.zerospeech:
            if len(self.widths) > 1:  # cannot happen with one model; guard the format promise
                raise RuntimeError(f"ZeroSpeech rows of different widths {sorted(self.widths)}")
            (self.out / "zerospeech" / "metadata.yaml").write_text(
                METADATA_TEMPLATE.format(
                    author=info.get("author", "speechsq"),
                    affiliation=info.get("affiliation", "unknown"),
                    description=json.dumps(info.get("description", "speechsq discrete units")),
                    train_set=info.get("train_set", "unknown"),
                    gpu_budget=info.get("gpu_budget", 0),
                    frame_shift=info["frame_shift"],
                    num_codes=self.num_codes,
                    embedding=self.embedding,
                    checkpoint=json.dumps(str(info.get("checkpoint", ""))),
                )
            )
        (self.out / "extract.json").write_text(json.dumps(info, indent=2) + "\n")


def num_codes_of(model) -> int:
    q = getattr(model, "quantizer", None)
    for attr in ("num_codes", "codebook_size"):
        if q is not None and hasattr(q, attr):
            return int(getattr(q, attr))
    raise AttributeError("cannot tell the codebook size of this model (model.quantizer.num_codes)")


def feature_frame_shift(cfg) -> float:
    pre = cfg["preprocessing"]
    return float(pre["hop_length"]) / float(pre["sample_rate"])


class UnitDict(dict):
    """The dict :class:`UnitExtractor` returns; ``out["dense"]`` still reads ``frame_units``
    (with a DeprecationWarning): in textlesslib ``dense`` means continuous features."""

    def __getitem__(self, key):
        if key == "dense":
            import warnings

            warnings.warn('UnitExtractor output "dense" is deprecated: use "frame_units" (the code index of every '
                          'latent frame)', DeprecationWarning, stacklevel=2)
            key = "frame_units"
        return super().__getitem__(key)


class UnitExtractor:
    """Waveform or features -> ``{"units", "durations", "frame_units", "z_q", "z_e"}`` (torch
    tensors); a thin wrapper over :class:`speechsq.api.UnitCodec` (``speechsq.load``), kept
    for existing callers.

    ``frame_units`` is the code index of every latent frame (formerly ``dense``, still readable
    with a DeprecationWarning), ``units``/``durations`` its run-length encoding. Waveforms of
    any rate and channel count are resampled / mixed down (logged). ``vocab_size``,
    ``code_hop_size`` (waveform samples per unit) and ``expected_sample_rate`` follow
    textlesslib's duck-typed encoder contract.
    """

    def __init__(self, model, cfg, device: str | torch.device = "cpu", cmvn=None):
        from speechsq.api import UnitCodec

        self.codec = UnitCodec(model, cfg, device, cmvn)
        if self.codec.pipeline.standardize and cmvn is None:
            raise ValueError("these features are standardised: pass the training-set Cmvn (cmvn.npz)")
        self.model, self.cfg, self.device, self.cmvn = self.codec.model, cfg, self.codec.device, cmvn
        self.pipeline = self.codec.pipeline
        self.vocab_size = self.codec.vocab_size
        self.expected_sample_rate = self.codec.sample_rate
        self.code_hop_size = self.codec.code_hop_size

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str | torch.device = "cpu", cmvn_path: str | Path | None = None):
        from speechsq.features import Cmvn
        from speechsq.training import load_model

        model, cfg = load_model(checkpoint, device=device)
        return cls(model, cfg, device, Cmvn.load(cmvn_path) if cmvn_path else None)

    def features(self, waveform, sample_rate: int | None = None) -> np.ndarray:
        """(frames, n_mels) features of a waveform (``sample_rate`` None: the model's rate)."""
        feats, _ = self.codec.features(waveform, sample_rate or self.expected_sample_rate)
        return feats.numpy().T

    def from_features(self, feats: np.ndarray) -> UnitDict:
        """(frames, n_mels) features (Kaldi orientation, as FeatureReader gives them)."""
        enc = self.codec.encode_features(np.asarray(feats, dtype=np.float32).T)
        return UnitDict(units=enc.units, durations=enc.durations, frame_units=enc.frame_units, z_q=enc.quantized,
                        z_e=enc.latents)

    def __call__(self, waveform, sample_rate: int | None = None) -> UnitDict:
        return self.from_features(self.features(waveform, sample_rate))


def extract(
    model,
    feats: Mapping[str, np.ndarray],
    out_dir: str | Path,
    frame_shift: float,
    utterances: list[str] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    zerospeech: bool = False,
    embedding: str = "codes",
    info: dict | None = None,
    progress: bool = True,
) -> dict:
    """Encode and write everything (see the module docstring); returns the info dict, which
    also goes into ``extract.json`` and the ``units`` completion marker."""
    if embedding not in ZEROSPEECH_EMBEDDINGS:
        raise ValueError(f"unknown ZeroSpeech embedding {embedding!r}; choose one of {ZEROSPEECH_EMBEDDINGS}")
    started = time.perf_counter()
    info = dict(info or {})
    with staged_directory(out_dir, looks_like_units_dir, what="units") as staging:
        writer = UnitWriter(staging, zerospeech, embedding, num_codes_of(model))
        n = frames = 0
        for enc in encode_batches(model, feats, utterances, batch_size, device, progress):
            check_model_output(enc, info.get("checkpoint", "the model"))
            writer.write(enc)
            n += 1
            frames += len(enc.indices)
        if n == 0:
            raise EvalInputError(f"no utterance to extract into {out_dir}")
        info.update(
            {
                "n_utterances": n,
                "n_unit_frames": frames,
                "frame_shift": frame_shift * DOWNSAMPLING,
                "num_codes": writer.num_codes,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        writer.finish(info)
        mark_complete(staging, "units", writer.units, producer="speechsq extract", **info)
    log.info("extracted %d utterances (%d unit frames) to %s", n, frames, out_dir)
    return info


UNITS_DIR_FILES = ("extract.json", "units.txt", MARKER)


def looks_like_units_dir(path: Path) -> bool:
    """An existing ``--out`` that extract may replace: it holds a units dir's own files."""
    return (path / "indices").is_dir() or any((path / name).is_file() for name in UNITS_DIR_FILES)


def check_model_output(enc: EncodedUtterance, checkpoint: str) -> None:
    for name, array in (("z_e", enc.z_e), ("z_q", enc.z_q)):
        if not np.isfinite(array).all():
            raise NonFiniteOutputError(f"{checkpoint} gives NaN/Inf {name} for utterance {enc.utt!r} "
                                       "(the model diverged); extract with an earlier checkpoint")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speechsq extract",
        description="Extract units (and a ZeroSpeech 2019 submission) with a checkpoint, from a data dir's features "
        "or from audio files. Inputs are checked first (complete features of that data dir; usable audio); the "
        "output appears complete, with complete.json, or not at all.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint written by speechsq train (e.g. exp/x/checkpoints/last.pt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", help="Kaldi data dir (its utt2spk lists the utterances); use with --feats")
    src.add_argument("--wav", "--wav-dir", dest="wav",
                     help="an audio file or a folder searched recursively (wav, flac, ogg, ... any case); "
                     "features are computed with the checkpoint's preprocessing")
    p.add_argument("--feats", help="complete feature dir (feats.scp, complete.json) computed from --data-dir")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out data-dir utterances that have no features (logged, counted in extract.json) "
                   "instead of failing")
    p.add_argument("--strict-sample-rate", action="store_true",
                   help="with --wav: refuse audio at a sample rate the pipeline does not expect instead of resampling it")
    p.add_argument("--cmvn", help="cmvn.npz for standardised pipelines with --wav")
    p.add_argument("--out", required=True, help="output directory (replaced only when the new one is complete)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--threads", default="auto", help="CPU threads (default: SPEECHSQ_THREADS/OMP_NUM_THREADS or all cores)")
    p.add_argument("--zerospeech", action="store_true", help="also write the ZeroSpeech 2019 submission tree")
    p.add_argument("--zerospeech-embedding", default="codes", choices=ZEROSPEECH_EMBEDDINGS, help="rows of test/<utt>.txt")
    p.add_argument("--train-set", default="unknown", help="metadata.yaml: training set description")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class DataDirSelection:
    """The utterances of a data dir to extract from a feature dir, and the ones left out."""

    utterances: list[str]
    skipped_by_features: dict[str, str]  # utt -> compute-feats' reason
    missing: list[str]  # no features, not skipped by compute-feats (only with --allow-missing)


def select_utterances(data_dir: str | Path, feats, allow_missing: bool = False) -> DataDirSelection:
    """Check a complete feature dir (``require_features`` reader) against a data dir (see the
    module docstring) and return what to extract."""
    from speechsq.data_prep.kaldi_dir import c_sorted, data_dir_utterances
    from speechsq.errors import MismatchError

    wanted = data_dir_utterances(data_dir)
    have = set(feats)
    made_from = (feats.completion.info.get("data_dir") if feats.completion else None) or "an unknown data dir"
    common = [u for u in wanted if u in have]
    if not common:
        raise MismatchError(
            f"no utterance of {data_dir} ({len(wanted)}) has features in {feats.feats_dir} ({len(have)} utterances, "
            f"computed from {made_from}): pass the --feats computed from {data_dir}"
        )
    skipped_list = feats.skipped()
    absent = [u for u in wanted if u not in have]
    skipped = {u: skipped_list[u] for u in absent if u in skipped_list}
    missing = c_sorted(u for u in absent if u not in skipped_list)
    if skipped:
        log.warning("%d utterances of %s were skipped by compute-feats and are left out (e.g. %s: %s)",
                    len(skipped), data_dir, next(iter(skipped)), next(iter(skipped.values())))
    if missing and not allow_missing:
        raise MismatchError(
            f"{len(missing)} of the {len(wanted)} utterances of {data_dir} have no features in {feats.feats_dir} "
            f"(computed from {made_from}; e.g. {', '.join(missing[:3])}): pass the --feats of this data dir, "
            f"or --allow-missing to leave them out"
        )
    if missing:
        log.warning("--allow-missing: leaving out %d of %d utterances of %s without features (e.g. %s)",
                    len(missing), len(wanted), data_dir, ", ".join(missing[:3]))
    return DataDirSelection(common, skipped, missing)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from speechsq.eval.inputs import checkpoint_identity
    from speechsq.features import Cmvn, build_pipeline, require_features
    from speechsq.threads import configure_threads
    from speechsq.training import load_model

    configure_threads(args.threads)
    info: dict = {}
    selection = None
    if args.data_dir:
        if not args.feats:
            raise EvalInputError("--data-dir needs --feats (the feature dir computed from that data dir)")
        if args.strict_sample_rate:
            raise EvalInputError("--strict-sample-rate applies to --wav input (compute-feats has its own)")
        feats = require_features(args.feats)
        selection = select_utterances(args.data_dir, feats, args.allow_missing)
        info.update({"data_dir": str(Path(args.data_dir).resolve()), "feats_dir": str(Path(args.feats).resolve()),
                     "skipped_by_features": selection.skipped_by_features, "missing": selection.missing})
    elif args.feats:
        raise EvalInputError("--feats goes with --data-dir; with --wav features are computed from the audio")
    if not Path(args.checkpoint).is_file():
        raise EvalInputError(f"{args.checkpoint}: no such checkpoint file")

    device = resolve_device(args.device)
    model, cfg = load_model(args.checkpoint, device=device)
    info = {**checkpoint_identity(args.checkpoint), "train_set": args.train_set,
            "quantizer": str(cfg["quantizer"]["name"]), **info}
    if args.wav:
        from speechsq.data_prep.audio import discover_audio
        from speechsq.features.audio_input import featurize_audio

        files = discover_audio(args.wav)  # before any work: missing input, duplicate stems
        cmvn = Cmvn.load(args.cmvn) if args.cmvn else None
        pipeline = build_pipeline(cfg["preprocessing"])
        if pipeline.standardize and cmvn is None:
            raise EvalInputError("standardised features need --cmvn feats/<train>/cmvn.npz")
        audio = featurize_audio(files, pipeline, cmvn, args.strict_sample_rate, progress=not args.no_progress,
                                source=str(args.wav))
        feats = audio.feats
        info.update({"wav": str(Path(args.wav).resolve()), "audio": audio.to_dict()})
    extract(
        model,
        feats,
        args.out,
        feature_frame_shift(cfg),
        selection.utterances if selection is not None else None,
        args.batch_size,
        device,
        args.zerospeech,
        args.zerospeech_embedding,
        info,
        progress=not args.no_progress,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
