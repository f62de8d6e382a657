"""Features of arbitrary audio input (a file or a folder, any format, rate and channel count).

Shared by ``speechsq extract --wav`` and ``speechsq resynthesize``::

    from speechsq.data_prep.audio import discover_audio
    from speechsq.features.audio_input import featurize_audio

    files = discover_audio("recordings/")                 # utt -> Path; duplicates are an error
    audio = featurize_audio(files, pipeline, cmvn=None)   # each file read and featurised once
    audio.feats["utt"]                                    # (frames, n_mels) float32
    audio.skipped                                         # SkippedFile(path, reason, detail), logged
    audio.summary.to_dict()                               # counts by sample rate / channels, notes

A file that cannot be used (silent, truncated, not audio, ...) is skipped with a log line and
listed in ``skipped``; it never stops the others. Multi-channel audio is mixed down and audio
at a rate the pipeline does not expect is resampled, each with a log line naming the file
(``summary.notes``). With ``strict_sample_rate`` such rates are refused before any work.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from speechsq.data_prep.audio import AudioInputError, AudioProblem, AudioSummary, Conversion, refuse_other_rates
from speechsq.data_prep.corpus import SkippedFile
from speechsq.features.logmel import FeatureError, LogMelPipeline

log = logging.getLogger(__name__)


@dataclass
class AudioFeatures:
    """What :func:`featurize_audio` made of a set of audio files."""

    feats: dict[str, np.ndarray]  # utt -> (frames, n_mels) float32 (standardised when a Cmvn was given)
    paths: dict[str, Path]  # utt -> file, for every usable file
    conversions: dict[str, Conversion]
    skipped: list[SkippedFile]
    summary: AudioSummary

    def to_dict(self) -> dict:
        """For reports (``extract.json``): counts, conversion notes and skipped files."""
        return {
            "files": len(self.paths) + len(self.skipped),
            "usable": len(self.paths),
            **self.summary.to_dict(),
            "skipped": [{"path": s.path, "reason": s.reason, "detail": s.detail} for s in self.skipped],
        }


def featurize_audio(files: Mapping[str, str | Path], pipeline: LogMelPipeline, cmvn=None,
                    strict_sample_rate: bool = False, progress: bool = True,
                    source: str = "the audio input") -> AudioFeatures:
    """Featurise every file of ``files`` (``utt -> path``, e.g. from
    :func:`~speechsq.data_prep.audio.discover_audio`) once, with ``pipeline`` and optional
    standardisation ``cmvn``. Raises :class:`AudioInputError` when no file is usable and,
    with ``strict_sample_rate``, :class:`~speechsq.errors.MismatchError` when a file is at a
    rate the pipeline does not expect."""
    files = {utt: Path(path) for utt, path in files.items()}
    if strict_sample_rate:
        refuse_other_rates(files, pipeline.expected_rates, source)
    summary = AudioSummary(pipeline.sample_rate, tuple(sorted(pipeline.expected_rates)))
    result = AudioFeatures({}, {}, {}, [], summary)
    for utt, path in tqdm(files.items(), desc="features", unit="file", disable=not progress):
        try:
            featurized = pipeline.featurize(path)
        except (AudioProblem, FeatureError) as err:
            reason, detail = getattr(err, "reason", "bad-signal"), getattr(err, "detail", str(err))
            log.warning("skip %s: %s: %s", path, reason, detail)
            result.skipped.append(SkippedFile(str(path), reason, detail))
            continue
        note = summary.add(utt, featurized.conversion)
        if note:
            log.warning("%s: %s", path, note)
        feats = featurized.feats
        result.feats[utt] = cmvn.apply(feats) if cmvn is not None else feats
        result.paths[utt] = path
        result.conversions[utt] = featurized.conversion
    if not result.feats:
        reasons = Counter(s.reason for s in result.skipped)
        raise AudioInputError(f"none of the {len(files)} audio files of {source} is usable "
                              f"({', '.join(f'{r}={n}' for r, n in sorted(reasons.items()))}; see the log)")
    if result.skipped:
        log.warning("%d of %d audio files skipped (listed above)", len(result.skipped), len(files))
    log.info("%s", summary.describe())
    return result
