"""``speechsq make-corpus``: a small real-audio multi-speaker corpus synthesised with espeak-ng.

Nobody can download ZeroSpeech 2019 or VCTK here, so the default recipe runs on this corpus.
It is written in the real corpus layouts, so the same ``prepare-data`` code reads it.

``--layout zerospeech19`` (default), mirroring the real corpus's meaning::

    <out>/train/voice/V00{1,2}_<10 digits>.wav   2 target voices
    <out>/train/unit/S0nn_<10 digits>.wav        10 other training speakers
    <out>/train/parallel/source/S0nn_<id>.wav    unit speakers reading sentences ...
    <out>/train/parallel/voice/V00n_<id>.wav     ... also read by V001/V002 (same 10-digit id)
    <out>/test/S1nn_<10 digits>.wav              4 speakers unseen in training, same sentences
    <out>/alignments/<set>.ali                   phone alignments (train, parallel, parallel_source, test)
    <out>/alignments/test.item                   ABX item file (libri-light format)
    <out>/corpus_info.json                       seed, speakers and their espeak-ng voices

``prepare-data --corpus zerospeech19`` copies ``alignments/<set>.ali`` to ``data/<set>/ali`` and
``alignments/test.item`` to ``data/test/items``.

``--layout vctk`` writes every speaker (as ``p9nn``) at 48 kHz into the VCTK 0.80 layout,
``wav48/<spk>/<spk>_<nnn>.wav`` and ``txt/<spk>/<spk>_<nnn>.txt``, plus ``alignments/all.ali``.

Speakers are espeak-ng voices with variants and prosody settings (rate, pitch, pitch range);
each utterance gets a small seeded prosody jitter and -70 dBFS of seeded dither (so no file is
digitally silent). Audio is resampled from espeak's 22050 Hz with soxr (HQ). Everything that is
random is drawn up front from ``numpy.random.default_rng(seed)``, and synthesis runs in fixed
chunks of utterances, each in a fresh process (espeak-ng carries state between utterances), so
the output is byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from speechsq.data_prep.alignments import SILENCE, PhoneSegment, items_from_alignments, write_alignments, write_items
from speechsq.data_prep.argtypes import positive_int
from speechsq.data_prep.espeak import Espeak, VoiceSpec
from speechsq.data_prep.staging import OutputDirError

log = logging.getLogger(__name__)

DEFAULT_UTTERANCES = 400
DITHER_DBFS = -70.0


@dataclass(frozen=True)
class Speaker:
    id: str
    role: str  # "voice" (target voices), "unit" (other training speakers), "test" (unseen)
    spec: VoiceSpec


# Distinct espeak-ng voices: accent (language), variant (formants, gender) and prosody differ.
SPEAKERS: tuple[Speaker, ...] = (
    Speaker("V001", "voice", VoiceSpec("en-us+f3", rate=160, pitch=62, pitch_range=55)),
    Speaker("V002", "voice", VoiceSpec("en+m3", rate=170, pitch=38, pitch_range=45)),
    Speaker("S001", "unit", VoiceSpec("en-us+m1", rate=150, pitch=45, pitch_range=50)),
    Speaker("S002", "unit", VoiceSpec("en+f2", rate=175, pitch=70, pitch_range=60)),
    Speaker("S003", "unit", VoiceSpec("en-gb-scotland+m2", rate=160, pitch=40, pitch_range=40)),
    Speaker("S004", "unit", VoiceSpec("en-029+f4", rate=165, pitch=65, pitch_range=55)),
    Speaker("S005", "unit", VoiceSpec("en-gb-x-rp+m4", rate=180, pitch=50, pitch_range=45)),
    Speaker("S006", "unit", VoiceSpec("en-us+f1", rate=155, pitch=75, pitch_range=65)),
    Speaker("S007", "unit", VoiceSpec("en-gb-x-gbclan+m5", rate=170, pitch=35, pitch_range=35)),
    Speaker("S008", "unit", VoiceSpec("en+f5", rate=185, pitch=60, pitch_range=50)),
    Speaker("S009", "unit", VoiceSpec("en-gb-x-gbcwmd+m6", rate=150, pitch=45, pitch_range=55)),
    Speaker("S010", "unit", VoiceSpec("en-us+klatt2", rate=165, pitch=55, pitch_range=50)),
    Speaker("S101", "test", VoiceSpec("en-us+m7", rate=168, pitch=42, pitch_range=50)),
    Speaker("S102", "test", VoiceSpec("en+f1", rate=158, pitch=68, pitch_range=60)),
    Speaker("S103", "test", VoiceSpec("en-gb-scotland+f3", rate=172, pitch=58, pitch_range=45)),
    Speaker("S104", "test", VoiceSpec("en-029+m2", rate=162, pitch=48, pitch_range=55)),
)

# Share of the utterance budget per part of the zerospeech19 layout.
SHARES = {"voice": 0.2, "unit": 0.5, "parallel": 0.1, "test": 0.2}
# zerospeech19 folder of each set, and the set each folder's alignments belong to
FOLDERS = {"voice": "train/voice", "unit": "train/unit", "parallel_source": "train/parallel/source",
           "parallel_voice": "train/parallel/voice", "test": "test"}
ALIGNMENT_SET = {"voice": "train", "unit": "train", "parallel_source": "parallel_source",
                 "parallel_voice": "parallel", "test": "test"}


@dataclass(frozen=True)
class UtteranceJob:
    utt: str
    speaker: str
    part: str  # key of FOLDERS (zerospeech19) or "all" (vctk)
    text: str
    spec: VoiceSpec  # speaker voice with this utterance's prosody jitter
    wav_path: str  # relative to the corpus root
    sample_rate: int
    dither_seed: int


@dataclass(frozen=True)
class UtteranceResult:
    utt: str
    num_samples: int
    phones: list[PhoneSegment]


def load_sentences() -> list[str]:
    text = resources.files("speechsq.resources").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _jitter(spec: VoiceSpec, rng: np.random.Generator) -> VoiceSpec:
    """Small per-utterance prosody variation around the speaker's settings."""
    return replace(spec, rate=int(round(spec.rate * rng.uniform(0.95, 1.05))),
                   pitch=int(np.clip(spec.pitch + rng.integers(-3, 4), 0, 100)))


class _Ids:
    """Unique random 10-digit file ids."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.used = rng, set()

    def __call__(self) -> str:
        while True:
            number = f"{int(self.rng.integers(0, 10**10)):010d}"
            if number not in self.used:
                self.used.add(number)
                return number


def plan_zerospeech19(seed: int, n_utterances: int, sentences: list[str]) -> list[UtteranceJob]:
    rng = np.random.default_rng(seed)
    new_id = _Ids(rng)
    by_role = {role: [s for s in SPEAKERS if s.role == role] for role in ("voice", "unit", "test")}
    per_voice = max(1, round(SHARES["voice"] * n_utterances / len(by_role["voice"])))
    per_unit = max(1, round(SHARES["unit"] * n_utterances / len(by_role["unit"])))
    n_parallel = max(1, round(SHARES["parallel"] * n_utterances / 2))
    per_test = max(2, round(SHARES["test"] * n_utterances / len(by_role["test"])))

    order = rng.permutation(len(sentences))
    # All test speakers read the same sentences: across-speaker ABX needs shared phone triples.
    test_sentences = [sentences[i] for i in order[:per_test]]
    pool = [sentences[i] for i in order[per_test:]] or sentences
    jobs: list[UtteranceJob] = []

    def add(speaker: Speaker, part: str, text: str, number: str | None = None) -> None:
        utt = f"{speaker.id}_{number or new_id()}"
        jobs.append(UtteranceJob(utt, speaker.id, part, text, _jitter(speaker.spec, rng),
                                 f"{FOLDERS[part]}/{utt}.wav", 16000, int(rng.integers(2**31))))

    def draw(n: int) -> list[str]:
        return [pool[i] for i in rng.choice(len(pool), size=n, replace=n > len(pool))]

    for speaker in by_role["voice"]:
        for text in draw(per_voice):
            add(speaker, "voice", text)
    for speaker in by_role["unit"]:
        for text in draw(per_unit):
            add(speaker, "unit", text)
    for k, text in enumerate(draw(n_parallel)):  # same sentence, same id: source (unit) and voice
        number = new_id()
        add(by_role["unit"][k % len(by_role["unit"])], "parallel_source", text, number)
        add(by_role["voice"][k % len(by_role["voice"])], "parallel_voice", text, number)
    for speaker in by_role["test"]:
        for text in test_sentences:
            add(speaker, "test", text)
    return jobs


def plan_vctk(seed: int, n_utterances: int, sentences: list[str]) -> list[UtteranceJob]:
    rng = np.random.default_rng(seed)
    per_speaker = max(2, round(n_utterances / len(SPEAKERS)))
    jobs = []
    for k, speaker in enumerate(SPEAKERS):
        spk = f"p{901 + k}"
        picks = rng.choice(len(sentences), size=per_speaker, replace=per_speaker > len(sentences))
        for n, i in enumerate(picks, 1):
            utt = f"{spk}_{n:03d}"
            jobs.append(UtteranceJob(utt, spk, "all", sentences[i], _jitter(speaker.spec, rng),
                                     f"wav48/{spk}/{utt}.wav", 48000, int(rng.integers(2**31))))
    return jobs


PLANS = {"zerospeech19": plan_zerospeech19, "vctk": plan_vctk}


def phone_segments(events, espeak_rate: int, duration: float) -> list[PhoneSegment]:
    """Phone events (start samples) -> contiguous segments covering [0, duration]; pauses and
    the lead-in before the first phone become ``SIL``, adjacent silences merge."""
    starts = [(e.sample / espeak_rate, SILENCE if e.phone.startswith("_") else e.phone) for e in events]
    starts = [(0.0, SILENCE)] + [(min(t, duration), p) for t, p in starts]
    segments: list[PhoneSegment] = []
    for (onset, phone), (offset, _) in zip(starts, starts[1:] + [(duration, SILENCE)]):
        if offset - onset <= 1e-9:
            continue
        if segments and phone == SILENCE and segments[-1].is_silence:
            segments[-1] = PhoneSegment(segments[-1].onset, offset, SILENCE)
        else:
            segments.append(PhoneSegment(onset, offset, phone))
    return segments


def synthesize_job(job: UtteranceJob, root: str) -> UtteranceResult:
    synth = Espeak().synthesize(job.text, job.spec)
    audio = synth.audio.astype(np.float32) / 32768.0
    audio = soxr.resample(audio, synth.sample_rate, job.sample_rate, quality="HQ").astype(np.float32)
    dither = np.random.default_rng(job.dither_seed).standard_normal(len(audio)).astype(np.float32)
    audio += dither * np.float32(10 ** (DITHER_DBFS / 20))
    peak = float(np.abs(audio).max())
    if peak > 0.97:  # resampling can overshoot espeak's full-scale output
        audio *= np.float32(0.97 / peak)
    path = Path(root) / job.wav_path
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, job.sample_rate, subtype="PCM_16")
    phones = phone_segments(synth.phones, synth.sample_rate, len(audio) / job.sample_rate)
    return UtteranceResult(job.utt, len(audio), phones)


# libespeak-ng keeps state from one utterance to the next (the flutter phase, resonator and echo
# memories), so an utterance's samples depend on what the same process synthesised before.
# For output that depends only on the seed, jobs are cut into fixed chunks (independent of
# --nj) and each chunk runs in a fresh process forked from a clean fork server.
JOBS_PER_PROCESS = 8


def _run_chunk(args: tuple[list[UtteranceJob], str]) -> list[UtteranceResult]:
    jobs, root = args
    return [synthesize_job(job, root) for job in jobs]


def synthesize_all(jobs: list[UtteranceJob], root: str, nj: int, progress: bool) -> list[UtteranceResult]:
    chunks = [(jobs[i: i + JOBS_PER_PROCESS], root) for i in range(0, len(jobs), JOBS_PER_PROCESS)]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["speechsq.data_prep.embedded_corpus"])
    results: list[UtteranceResult] = []
    with tqdm(total=len(jobs), desc="synthesise", unit="utt", disable=not progress) as bar:
        with ctx.Pool(max(1, nj), maxtasksperchild=1) as pool:
            for chunk_results in pool.imap(_run_chunk, chunks, chunksize=1):
                results += chunk_results
                bar.update(len(chunk_results))
    return results


@dataclass
class CorpusSummary:
    root: str
    layout: str
    seed: int
    utterances: int
    hours: float
    seconds: float


def make_corpus(out: str | Path, seed: int = 0, layout: str = "zerospeech19",
                n_utterances: int = DEFAULT_UTTERANCES, nj: int = 2, progress: bool = True) -> CorpusSummary:
    """Synthesise the corpus into ``out`` (built in ``<out>.partial`` and renamed when complete)."""
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputDirError(f"{out} exists and is not empty; remove it or choose another --out")
    if layout not in PLANS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(PLANS)}")
    if n_utterances < 1:
        raise ValueError(f"n_utterances must be >= 1, got {n_utterances}")
    jobs = PLANS[layout](seed, n_utterances, load_sentences())
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    results = synthesize_all(jobs, str(partial), nj, progress)
    _write_metadata(partial, layout, seed, jobs, results)
    if out.exists():
        out.rmdir()
    os.replace(partial, out)
    seconds = sum(r.num_samples / j.sample_rate for j, r in zip(jobs, results))
    summary = CorpusSummary(str(out), layout, seed, len(jobs), seconds / 3600, time.perf_counter() - start)
    log.info("wrote %d utterances (%.2f h) to %s in %.1f s", len(jobs), summary.hours, out, summary.seconds)
    return summary


def _write_metadata(root: Path, layout: str, seed: int, jobs: list[UtteranceJob],
                    results: list[UtteranceResult]) -> None:
    alignments: dict[str, dict[str, list[PhoneSegment]]] = {}
    for job, result in zip(jobs, results):
        set_name = ALIGNMENT_SET.get(job.part, "all")
        alignments.setdefault(set_name, {})[job.utt] = result.phones
        if layout == "vctk":
            txt = root / "txt" / job.speaker / f"{job.utt}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text(job.text + "\n", encoding="utf-8")
    (root / "alignments").mkdir()
    for set_name, table in alignments.items():
        write_alignments(root / "alignments" / f"{set_name}.ali", table)
    if "test" in alignments:
        utt2spk = {job.utt: job.speaker for job in jobs}
        write_items(root / "alignments" / "test.item", items_from_alignments(alignments["test"], utt2spk))
    info = {
        "generator": "speechsq make-corpus (espeak-ng)",
        "layout": layout,
        "seed": seed,
        "utterances": len(jobs),
        "speakers": {s.id: {"role": s.role, **asdict(s.spec)} for s in SPEAKERS},
        "texts": {job.utt: job.text for job in jobs},
    }
    (root / "corpus_info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="speechsq make-corpus",
        description="Synthesise the embedded multi-speaker corpus with espeak-ng (real audio, phone alignments, "
        "ABX items) in the ZeroSpeech 2019 layout (2 target voices, 10 unit speakers, parallel set, "
        "4 unseen test speakers, 16 kHz) or the VCTK 0.80 layout (48 kHz). Deterministic for a seed.",
    )
    parser.add_argument("--out", required=True, help="corpus root to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (sentences, prosody jitter, file ids)")
    parser.add_argument("--layout", choices=sorted(PLANS), default="zerospeech19", help="corpus layout")
    parser.add_argument("--utterances", type=positive_int, default=DEFAULT_UTTERANCES,
                        help=f"approximate number of utterances (default {DEFAULT_UTTERANCES})")
    parser.add_argument("--nj", type=positive_int, default=max(1, min(4, os.cpu_count() or 1)), help="worker processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = make_corpus(args.out, args.seed, args.layout, args.utterances, args.nj)
    print(f"{summary.utterances} utterances, {summary.hours * 60:.1f} min of audio, layout {summary.layout}, "
          f"seed {summary.seed} -> {summary.root} ({summary.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
