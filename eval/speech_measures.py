"""Objective measures of what comes out of ``speechsq resynthesize``.

    speechsq synthesis-measures --checkpoint exp/x/checkpoints/last.pt \\
        --synthesis exp/x/synthesis/test exp/x/synthesis/parallel \\
        [--speaker-feats feats/train --speaker-data data/train] [--items data/test/items] \\
        --out exp/x/eval/synthesis.json

Resynthesis (folder ``source`` of a synthesis dir: each utterance in its own voice), against
the original audio, frame by frame (the decoder keeps the timing of its input, so no DTW):

``lsd_db``  log-spectral distance on the mel magnitudes of the model's own analysis (its
            STFT and filterbank, no pre-emphasis): per frame ``sqrt(mean_bands (L - L')^2)``
            with ``L = 20 log10 max(mel, 1e-5)``, averaged over frames. A gain ``g`` on the
            resynthesis alone gives exactly ``|20 log10 g|``.
``mcd_db``  mel-cepstral distortion ``(10 / ln 10) sqrt(2 sum_{d=1..24} (c_d - c'_d)^2)``
            averaged over frames (d up to 24, or N - 1 with fewer bands), with ``c`` the mel cepstrum of the same analysis: the
            coefficients of the cosine series ``ln mel(m) = c_0 + 2 sum_d c_d cos(pi d (m + 1/2) / N)``
            over the ``N`` mel bands (SPTK's cepstrum convention, on the filterbank's mel
            axis; ``c_0``, the level, is left out, so a gain changes nothing). Computed here
            rather than with SPTK's ``mcep`` (pysptk/pyworld, an all-pole fit on a warped
            frequency axis) to add no dependency and to measure exactly the spectrum the
            model works on: the values are on the usual MCD scale and compare the models of
            this package, but are not interchangeable with SPTK-based MCDs of papers.

The ZeroSpeech pipeline describes the peak-normalised signal, so the original is scaled to
the pipeline's peak first (the comparison is of what the model was asked to reproduce).

Voice conversion (every other folder, one per target voice):

``speaker_match``  percent of converted utterances that a speaker classifier trained on the
                   training set assigns to the target voice. The classifier is the linear
                   speaker probe of :mod:`speechsq.eval.probes` on log-Mel frames (the model's
                   own features) of ``--speaker-feats``, with an utterance assigned to the
                   speaker of highest mean log-probability over its frames; its accuracy on
                   held-out real training utterances is reported next to it.
``abx_within`` / ``abx_across``
                   ABX error (percent, within-context) of the converted speech re-encoded by
                   the model (quantised codes ``z_q``) on ``--items``: does the content
                   survive conversion?
``abx_within_original`` / ``abx_across_original``
                   the same ABX of the original speech of the same utterances, re-encoded by
                   the same model: the number to compare with (a subset of the test set has
                   fewer cells than ``metrics.json``'s ABX).

The JSON has flat keys for the report (``resynthesis_mcd_db``, ``resynthesis_lsd_db``,
``conversion_speaker_match``, ``conversion_abx_within``, ``conversion_abx_across``: means over
the target voices; ``conversion_abx_within_original``, ``conversion_abx_across_original``;
``None`` where not measured) and the detail sections ``resynthesis``,
``conversion`` (per voice) and ``speaker_classifier``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

MEL_FLOOR = 1e-5  # -100 dB: the ZeroSpeech pipeline's amin; keeps silent bands finite
MCD_COEFFICIENTS = 24  # c_1 .. c_24, the usual mel-cepstral order
DB_PER_NEPER = 10.0 / np.log(10.0)  # the MCD constant (10 / ln 10)


class MeasureError(SpeechsqError, ValueError):
    """Inputs the synthesis measures cannot use."""


# ----------------------------------------------------------------------------- spectral distances


def log_mel(wav: np.ndarray, pipeline) -> np.ndarray:
    """(frames, n_mels) natural log of the mel magnitudes of ``wav`` (the pipeline's STFT and
    filterbank, at the pipeline's rate, no other processing), floored at ``MEL_FLOOR``."""
    mel = pipeline.mel(np.asarray(wav, dtype=np.float64))
    return np.log(np.maximum(mel.astype(np.float64), MEL_FLOOR))


def _common(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if reference.ndim != 2 or reference.shape[1:] != estimate.shape[1:]:
        raise MeasureError(f"log spectra must be (frames, bands) with the same bands, got {reference.shape} and {estimate.shape}")
    t = min(len(reference), len(estimate))
    if t < 1:
        raise MeasureError("no frames to compare")
    return reference[:t], estimate[:t]


def log_spectral_distance(reference_log: np.ndarray, estimate_log: np.ndarray) -> float:
    """LSD in dB of two (frames, bands) natural-log magnitude spectra (common frames)."""
    a, b = _common(reference_log, estimate_log)
    db = 20.0 / np.log(10.0) * (a - b)  # ln magnitude -> dB
    return float(np.mean(np.sqrt(np.mean(db**2, axis=1))))


def mel_cepstrum(log_mel_frames: np.ndarray, n_coefficients: int = MCD_COEFFICIENTS) -> np.ndarray:
    """(frames, n_coefficients) cepstral coefficients c_1..c_n of (frames, N) natural-log mel
    spectra: ``ln mel(m) = c_0 + 2 sum_d c_d cos(pi d (m + 1/2) / N)``, i.e. scipy's
    unnormalised DCT-II (``2 sum_m x_m cos(...)``) divided by ``2 N``."""
    bands = log_mel_frames.shape[1]
    if n_coefficients >= bands:
        raise MeasureError(f"{n_coefficients} coefficients need more than {bands} bands")
    return scipy.fft.dct(log_mel_frames, type=2, axis=1)[:, 1 : n_coefficients + 1] / (2.0 * bands)


def mel_cepstral_distortion(reference_log: np.ndarray, estimate_log: np.ndarray, n_coefficients: int = MCD_COEFFICIENTS) -> float:
    """MCD in dB of two (frames, bands) natural-log mel spectra (common frames, c_0 excluded)."""
    a, b = _common(reference_log, estimate_log)
    diff = mel_cepstrum(a, n_coefficients) - mel_cepstrum(b, n_coefficients)
    return float(np.mean(DB_PER_NEPER * np.sqrt(2.0 * np.sum(diff**2, axis=1))))


def mcd_order(bands: int) -> int:
    """Cepstral coefficients the MCD counts: 24, or all but c_0 with fewer than 25 mel bands."""
    return min(MCD_COEFFICIENTS, bands - 1)


@dataclass
class SpectralDistance:
    mcd_db: float
    lsd_db: float
    frames: int


def compare_waveforms(reference: np.ndarray, estimate: np.ndarray, pipeline) -> SpectralDistance:
    """MCD and LSD of ``estimate`` against ``reference`` (both at the pipeline's rate)."""
    ref, est = _common(log_mel(reference, pipeline), log_mel(estimate, pipeline))
    order = mcd_order(ref.shape[1])
    return SpectralDistance(mel_cepstral_distortion(ref, est, order), log_spectral_distance(ref, est), len(ref))


# ----------------------------------------------------------------------------- speaker classifier


@dataclass
class SpeakerClassifier:
    """Linear speaker probe on log-Mel frames; an utterance goes to the speaker of highest mean
    frame log-probability."""

    probe: object
    heldout_accuracy: float | None  # percent of held-out real utterances assigned to their speaker
    n_train_utterances: int
    n_heldout_utterances: int

    @property
    def speakers(self) -> list[str]:
        return [str(s) for s in self.probe.classes]

    def assign(self, frames: np.ndarray) -> str:
        """(frames, n_mels) features of one utterance -> the speaker it is assigned to."""
        return self.speakers[int(np.argmax(self.probe.log_proba(frames).mean(axis=0)))]

    def to_dict(self) -> dict:
        return {"speakers": self.speakers, "heldout_accuracy": self.heldout_accuracy,
                "n_train_utterances": self.n_train_utterances, "n_heldout_utterances": self.n_heldout_utterances,
                "features": "log-Mel frames (the model's features), linear probe, utterance = mean log-probability"}


def train_speaker_classifier(
    features: Mapping[str, np.ndarray],
    utt2spk: Mapping[str, str],
    max_utterances_per_speaker: int = 50,
    max_frames: int = 50000,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> SpeakerClassifier:
    """Train on ``features`` (utt -> (frames, n_mels)) of the training set; ``test_fraction``
    of each speaker's utterances are held out to measure the classifier itself."""
    from speechsq.eval.probes import LinearProbe, split_utterances

    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[str]] = {}
    for utt in sorted(u for u in features if u in utt2spk):
        by_speaker.setdefault(utt2spk[utt], []).append(utt)
    if len(by_speaker) < 2:
        raise MeasureError(f"a speaker classifier needs at least two speakers, found {len(by_speaker)}")
    chosen = []
    for utts in by_speaker.values():
        chosen += sorted(rng.permutation(utts)[:max_utterances_per_speaker].tolist())
    train, heldout = split_utterances(chosen, utt2spk, test_fraction, seed)
    x = np.concatenate([np.asarray(features[u], np.float64) for u in train])
    y = np.concatenate([[utt2spk[u]] * len(features[u]) for u in train])
    keep = rng.permutation(len(x))[:max_frames]
    classifier = SpeakerClassifier(LinearProbe(x[keep], y[keep], seed=seed), None, len(train), len(heldout))
    if heldout:
        hits = [classifier.assign(np.asarray(features[u], np.float64)) == utt2spk[u] for u in heldout]
        classifier.heldout_accuracy = 100.0 * float(np.mean(hits))
    return classifier


# ----------------------------------------------------------------------------- synthesis dirs


@dataclass
class SynthesisEntry:
    voice: str
    utt: str
    wav: Path
    source_audio: Path | None
    source_speaker: str | None


def read_synthesis_dir(directory: str | Path) -> list[SynthesisEntry]:
    """The entries of a finished ``speechsq resynthesize`` output (its ``synthesis.tsv``)."""
    from speechsq.completion import require_complete
    from speechsq.eval.resynthesize import KIND, MANIFEST

    directory = Path(directory)
    require_complete(directory, KIND, remedy="run `speechsq resynthesize` again")
    entries = []
    for lineno, line in enumerate((directory / MANIFEST).read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 5:
            raise MeasureError(f"{directory / MANIFEST}:{lineno}: expected 5 tab-separated fields, got {len(fields)}")
        voice, utt, wav, source, speaker = fields
        entries.append(SynthesisEntry(voice, utt, directory / wav, None if source == "-" else Path(source),
                                      None if speaker == "-" else speaker))
    return entries


def _read_wav(path: Path, rate: int) -> np.ndarray:
    import soundfile as sf

    from speechsq.data_prep.audio import to_mono_at_rate

    wav, sr = sf.read(str(path), dtype="float64", always_2d=True)
    return np.asarray(to_mono_at_rate(wav, sr, rate)[0], dtype=np.float64)


@dataclass
class ResynthesisMeasures:
    mcd_db: float
    lsd_db: float
    n_utterances: int
    mcd_coefficients: int = MCD_COEFFICIENTS
    per_utterance: dict[str, dict[str, float]] = field(default_factory=dict)


def measure_resynthesis(entries: list[SynthesisEntry], codec, progress: bool = False) -> ResynthesisMeasures | None:
    """MCD / LSD of the ``source``-voice entries against their source audio (frame-averaged per
    utterance, then averaged over utterances)."""
    from tqdm.auto import tqdm

    from speechsq.eval.resynthesize import SOURCE_VOICE
    from speechsq.vocoders import build_inverse

    chosen = [e for e in entries if e.voice == SOURCE_VOICE and e.source_audio is not None]
    if not chosen:
        return None
    inverse = build_inverse(codec.pipeline, codec.cmvn)
    per_utt = {}
    for entry in tqdm(chosen, desc="resynthesis MCD/LSD", disable=not progress):
        reference = inverse.described_waveform(_read_wav(entry.source_audio, codec.sample_rate))
        distance = compare_waveforms(reference, _read_wav(entry.wav, codec.sample_rate), codec.pipeline)
        per_utt[entry.utt] = {"mcd_db": distance.mcd_db, "lsd_db": distance.lsd_db, "frames": distance.frames}
    return ResynthesisMeasures(
        float(np.mean([v["mcd_db"] for v in per_utt.values()])),
        float(np.mean([v["lsd_db"] for v in per_utt.values()])),
        len(per_utt), mcd_order(codec.pipeline.n_mels), per_utt,
    )


def measure_conversion(
    entries: list[SynthesisEntry], codec, classifier: SpeakerClassifier | None = None,
    items: str | Path | None = None, abx_distance: str = "cosine", progress: bool = False,
) -> dict[str, dict]:
    """Per target voice: speaker match (with a classifier) and ABX of the re-encoded speech
    (with ``items``)."""
    from tqdm.auto import tqdm

    from speechsq.eval.resynthesize import SOURCE_VOICE

    voices = sorted({e.voice for e in entries if e.voice != SOURCE_VOICE})
    no_source = [e.utt for e in entries if e.voice != SOURCE_VOICE and e.source_audio is None]
    if items is not None and no_source:  # the ABX of the original speech is the number to compare with
        raise MeasureError(f"{len(no_source)} converted utterance(s) have no source audio to compare with (e.g. "
                           f"{no_source[0]}: converted from units?); run without --items")
    out: dict[str, dict] = {}
    original_scores: dict[frozenset, tuple] = {}  # per utterance set: the ABX of the original speech
    for voice in voices:
        chosen = [e for e in entries if e.voice == voice]
        result: dict = {"n_utterances": len(chosen)}
        assigned: dict[str, int] = {}
        codes: dict[str, np.ndarray] = {}
        for entry in tqdm(chosen, desc=f"conversion to {voice}", disable=not progress):
            feats, _ = codec.features(_read_wav(entry.wav, codec.sample_rate), codec.sample_rate)
            if classifier is not None:
                who = classifier.assign(feats.numpy().T)
                assigned[who] = assigned.get(who, 0) + 1
            if items is not None:
                codes[entry.utt] = codec.encode_features(feats).quantized.numpy()
        if classifier is not None:
            if voice not in classifier.speakers:
                raise MeasureError(f"target voice {voice} is not among the classifier's speakers ({', '.join(classifier.speakers)})")
            result["speaker_match"] = 100.0 * assigned.get(voice, 0) / len(chosen)
            result["assigned"] = dict(sorted(assigned.items()))
        if items is not None:
            result["abx_within"], result["abx_across"] = _subset_abx(items, codes, codec, abx_distance)
            key = frozenset(codes)
            if key not in original_scores:  # every voice converts the same utterances: scored once
                original_scores[key] = _subset_abx(items, {
                    e.utt: codec.encode(_read_wav(e.source_audio, codec.sample_rate), codec.sample_rate).quantized.numpy()
                    for e in chosen}, codec, abx_distance)
            result["abx_within_original"], result["abx_across_original"] = original_scores[key]
        out[voice] = result
    return out


def _subset_abx(items, features: dict[str, np.ndarray], codec, distance: str) -> tuple[float | None, float | None]:
    """(within, across)-speaker ABX, within context, of the synthesised subset of the item
    file's utterances: the others are missing on purpose (compute_abx refuses partial features
    unless told so, and counts them)."""
    from speechsq.eval.abx import compute_abx

    abx = compute_abx(items, features, frame_shift=codec.frame_shift, distance=distance, context_modes=("within",),
                      allow_missing=True)
    return abx.scores.get("within-within"), abx.scores.get("across-within")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(resynthesis: ResynthesisMeasures | None, conversion: Mapping[str, dict],
              classifier: SpeakerClassifier | None) -> dict:
    """The JSON of the module docstring."""
    return {
        "resynthesis_mcd_db": resynthesis.mcd_db if resynthesis else None,
        "resynthesis_lsd_db": resynthesis.lsd_db if resynthesis else None,
        "conversion_speaker_match": _mean(v.get("speaker_match") for v in conversion.values()),
        "conversion_abx_within": _mean(v.get("abx_within") for v in conversion.values()),
        "conversion_abx_across": _mean(v.get("abx_across") for v in conversion.values()),
        "conversion_abx_within_original": _mean(v.get("abx_within_original") for v in conversion.values()),
        "conversion_abx_across_original": _mean(v.get("abx_across_original") for v in conversion.values()),
        "resynthesis": asdict(resynthesis) if resynthesis else None,
        "conversion": dict(conversion),
        "speaker_classifier": classifier.to_dict() if classifier else None,
    }


# ----------------------------------------------------------------------------- command line


MEASURES_FILE = "synthesis.json"  # its flat keys that `speechsq report` shows: report.SYNTHESIS_METRICS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speechsq synthesis-measures",
        description="MCD / LSD of resynthesis (source voice) against the original audio; speaker match and "
                    "ABX of voice conversion; written as JSON.",
    )
    p.add_argument("--checkpoint", required=True, help="the checkpoint that made the synthesis (features, re-encoding)")
    p.add_argument("--synthesis", nargs="+", required=True, help="output folder(s) of `speechsq resynthesize`")
    p.add_argument("--speaker-feats", help="training features (feats/train) for the speaker classifier")
    p.add_argument("--speaker-data", help="data dir with utt2spk of --speaker-feats (default: --speaker-feats)")
    p.add_argument("--items", help="ABX item file of the converted utterances (e.g. data/test/items)")
    p.add_argument("--abx-distance", default="cosine")
    p.add_argument("--cmvn", help="cmvn.npz of standardised (VCTK) features")
    p.add_argument("--out", required=True,
                   help="output directory (e.g. exp/x/synthesis_eval): synthesis.json, then complete.json last")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the speaker classifier's data split")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from speechsq.api import load
    from speechsq.completion import atomic_write_json, begin, mark_complete
    from speechsq.threads import configure_threads

    configure_threads()
    out_dir = begin(args.out)
    entries = [e for d in args.synthesis for e in read_synthesis_dir(d)]
    codec = load(args.checkpoint, device=args.device, cmvn=args.cmvn)
    classifier = None
    if args.speaker_feats:
        from speechsq.data_prep.kaldi_dir import read_table
        from speechsq.features import FeatureReader

        utt2spk = read_table(Path(args.speaker_data or args.speaker_feats) / "utt2spk")
        classifier = train_speaker_classifier(FeatureReader(args.speaker_feats), utt2spk, seed=args.seed)
        log.info("speaker classifier: %d speakers, held-out accuracy %s%%", len(classifier.speakers),
                 classifier.heldout_accuracy)
    progress = not args.no_progress
    result = summarize(measure_resynthesis(entries, codec, progress),
                       measure_conversion(entries, codec, classifier, args.items, args.abx_distance, progress), classifier)
    result["settings"] = {"checkpoint": str(args.checkpoint), "synthesis": args.synthesis, "items": args.items,
                          "speaker_feats": args.speaker_feats, "seed": args.seed}
    atomic_write_json(out_dir / MEASURES_FILE, result)
    mark_complete(out_dir, "synthesis_measures", [MEASURES_FILE], producer="speechsq synthesis-measures",
                  checkpoint=str(args.checkpoint), synthesis=[str(d) for d in args.synthesis])
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list)) or v is None}, indent=2))
    log.info("wrote %s", out_dir / MEASURES_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
