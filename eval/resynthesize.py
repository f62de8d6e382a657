"""Units back to speech: resynthesis in the source voice and voice conversion to training
speakers (ZeroSpeech 2019's "TTS without T": the test utterances spoken in V001 / V002).

    speechsq resynthesize --checkpoint exp/x/checkpoints/last.pt \\
        (--data-dir data/test | --wav FILE_OR_FOLDER | --units exp/x/units/test) \\
        [--speaker V001 V002] [--source-voice] [--zerospeech] --out exp/x/synthesis/test

Input, one of:

``--data-dir``  a Kaldi data dir: ``wav.scp`` (the waveforms) and ``utt2spk`` (source speakers);
``--wav``       one audio file or a folder of them (:func:`speechsq.data_prep.audio.discover_audio`:
                recursively, every format libsndfile reads, extensions in any case, duplicate
                stems an error; utterance id = file name without extension);
``--units``     the output of ``speechsq extract`` (``indices/<utt>.npy``, the code of every
                latent frame): speech made from the discrete units alone.

Every input is encoded once and decoded into every voice asked for: ``--speaker`` names
training speakers (an unknown name is an error listing the known ones); ``--source-voice``
decodes each utterance in its own speaker's voice (its speaker must be a training speaker;
from ``utt2spk``). Audio files that cannot be used (unreadable, silent, too short) are
skipped, logged and listed in ``skipped``; the run goes on. Written under ``--out``::

    <voice>/<utt>.wav          16-bit PCM at the features' sample rate (voice: a speaker name,
                               or ``source`` for --source-voice); peaks above 0.999 are scaled
                               down to 0.999 (counted in resynthesize.json)
    zerospeech/test/<voice>_<file id>.wav
                               with --zerospeech, for every --speaker voice: the synthesis part
                               of the ZeroSpeech 2019 submission tree (file id = the utterance
                               id after its speaker prefix, e.g. V001_0379088085.wav for
                               S002_0379088085), hard links to the files above
    synthesis.tsv              <voice> <utt> <wav> <source audio or -> <source speaker or ->
    skipped                    <utt> <reason> <detail>
    resynthesize.json          settings and counts
    complete.json              completion marker (kind ``synthesis``, keys ``<voice>/<utt>``), last

The folder is built beside ``--out`` and renamed into place complete, replacing an earlier
output of this command (any other non-empty folder is refused).

``speechsq synthesis-measures`` (:mod:`speechsq.eval.speech_measures`) scores these folders.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

SOURCE_VOICE = "source"
PEAK_LIMIT = 0.999
MANIFEST = "synthesis.tsv"
KIND = "synthesis"


class ResynthesisError(SpeechsqError, ValueError):
    """Options or inputs of ``speechsq resynthesize`` that cannot work together."""


# ----------------------------------------------------------------------------- inputs


@dataclass
class Source:
    """One utterance to synthesise: from audio (``audio``) or from units (``frame_units``)."""

    utt: str
    speaker: str | None = None
    audio: Path | None = None
    frame_units: Path | None = None


def sources_from_data_dir(data_dir: str | Path) -> list[Source]:
    from speechsq.data_prep.kaldi_dir import KaldiDataDir

    data = KaldiDataDir.read(data_dir)
    return [Source(utt, data.utt2spk.get(utt), Path(data.wav_path(utt))) for utt in data.utterances]


def sources_from_audio(path: str | Path, utt2spk: Mapping[str, str] | None = None) -> list[Source]:
    from speechsq.data_prep.audio import discover_audio

    files = discover_audio(path)
    return [Source(utt, (utt2spk or {}).get(utt), file) for utt, file in files.items()]


def sources_from_units(units_dir: str | Path, utt2spk: Mapping[str, str] | None = None) -> list[Source]:
    from speechsq.completion import require_complete

    units_dir = Path(units_dir)
    marker = require_complete(units_dir, "units", remedy="run `speechsq extract` again")
    files = sorted((units_dir / "indices").glob("*.npy"))
    if not files:
        raise ResynthesisError(f"no indices/*.npy under {units_dir}; give the --out folder of `speechsq extract`")
    if not marker.matches(f.stem for f in files):  # as evaluate: units added or removed after extraction
        raise ResynthesisError(f"{units_dir}/indices holds {len(files)} utterances but its complete.json says "
                               f"{marker.count} (the directory was changed after extraction); run `speechsq extract` again")
    return [Source(f.stem, (utt2spk or {}).get(f.stem), frame_units=f) for f in files]


# ----------------------------------------------------------------------------- outputs


def zerospeech_name(voice: str, utt: str) -> str:
    """ZeroSpeech 2019 synthesis file name: ``S002_0379088085`` in ``V001`` -> ``V001_0379088085``."""
    file_id = utt.split("_", 1)[1] if "_" in utt else utt
    return f"{voice}_{file_id}"


def limit_peak(wav: np.ndarray, limit: float = PEAK_LIMIT) -> tuple[np.ndarray, bool]:
    """Scale ``wav`` down to ``limit`` when its peak exceeds it (16-bit PCM would clip)."""
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak > limit:
        return wav * (limit / peak), True
    return wav, False


def write_wav(path: Path, wav: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav, written atomically (a crash never leaves half a file)."""
    import soundfile as sf

    from speechsq.completion import atomic_write_bytes

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wav, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buffer.getvalue())


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, target)


@dataclass
class SynthesisSummary:
    written: int = 0
    utterances: int = 0
    peak_limited: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (utt, reason, detail)
    keys: list[str] = field(default_factory=list)  # <voice>/<utt>
    seconds: float = 0.0


def _voices_of(source: Source, voices: list[str], source_voice: bool) -> Iterator[tuple[str, str | None]]:
    """(folder, speaker) pairs to decode ``source`` into."""
    for voice in voices:
        yield voice, voice
    if source_voice:
        yield SOURCE_VOICE, source.speaker


def looks_like_synthesis_dir(path: Path) -> bool:
    """An existing --out that this command may replace: one it wrote before."""
    return (path / MANIFEST).is_file() or (path / "resynthesize.json").is_file()


def synthesize(
    codec,
    sources: list[Source],
    out_dir: str | Path,
    voices: list[str],
    source_voice: bool = False,
    zerospeech: bool = False,
    progress: bool = True,
    info: dict | None = None,
) -> SynthesisSummary:
    """Decode every source into every voice and write the files of the module docstring.

    The folder is built beside ``out_dir`` and renamed into place complete
    (:mod:`speechsq.data_prep.staging`): an interrupted run leaves the previous output (or
    none), and no stale file of an earlier run (another voice, a longer list) survives."""
    from speechsq.data_prep.staging import staged_directory

    if not voices and not source_voice:
        raise ResynthesisError("nothing to synthesise: give --speaker NAME(S) and/or --source-voice")
    for voice in voices:
        codec.speaker_id(voice)  # unknown names fail here, before any work, listing the known ones
    if source_voice and all(s.speaker is None for s in sources):
        raise ResynthesisError("--source-voice needs each utterance's speaker: give --data-dir, or --utt2spk with --wav/--units")
    with staged_directory(out_dir, looks_like_synthesis_dir, what="synthesis") as staging:
        summary = _synthesize_into(staging, codec, sources, voices, source_voice, zerospeech, progress, info)
    if summary.skipped:
        log.warning("%d item(s) skipped, listed in %s", len(summary.skipped), Path(out_dir) / "skipped")
    log.info("wrote %d wavs of %d utterances to %s in %.1f s", summary.written, summary.utterances, out_dir, summary.seconds)
    return summary


def _synthesize_into(out_dir: Path, codec, sources, voices, source_voice, zerospeech, progress, info) -> SynthesisSummary:
    from tqdm.auto import tqdm

    from speechsq.completion import atomic_write_json, atomic_write_text, mark_complete
    from speechsq.data_prep.audio import read_audio

    known = set(codec.speakers)
    summary = SynthesisSummary()
    manifest: list[str] = []
    started = time.perf_counter()
    for source in tqdm(sources, desc="resynthesize", unit="utt", disable=not progress):
        try:
            if source.frame_units is not None:
                content = np.load(source.frame_units, allow_pickle=False)
            else:
                audio = read_audio(source.audio, codec.sample_rate, codec.pipeline.resample_type)
                if audio.conversion.describe() != "unchanged":
                    log.info("%s: %s", source.audio, audio.conversion.describe())
                content = codec.encode(audio.wav, codec.sample_rate)
        except SpeechsqError as err:
            reason = getattr(err, "reason", type(err).__name__)
            summary.skipped.append((source.utt, reason, str(err)))
            log.warning("skipping %s: %s", source.utt, err)
            continue
        summary.utterances += 1
        for folder, speaker in _voices_of(source, voices, source_voice):
            if speaker not in known:
                summary.skipped.append((source.utt, "unknown-source-speaker",
                                        f"{folder}: speaker {speaker} is not a training speaker of the model"))
                continue
            wav_out, limited = limit_peak(codec.vocode(codec.decode(content, speaker)).numpy())
            summary.peak_limited += int(limited)
            path = out_dir / folder / f"{source.utt}.wav"
            write_wav(path, wav_out, codec.sample_rate)
            if zerospeech and folder != SOURCE_VOICE:
                link_or_copy(path, out_dir / "zerospeech" / "test" / f"{zerospeech_name(folder, source.utt)}.wav")
            summary.written += 1
            summary.keys.append(f"{folder}/{source.utt}")
            manifest.append("\t".join([folder, source.utt, str(path.relative_to(out_dir)),
                                       str(source.audio) if source.audio else "-", source.speaker or "-"]))
    summary.seconds = round(time.perf_counter() - started, 3)
    atomic_write_text(out_dir / MANIFEST, "".join(line + "\n" for line in manifest))
    atomic_write_text(out_dir / "skipped", "".join(f"{u} {r} {' '.join(d.split())}\n" for u, r, d in summary.skipped))
    record = {**(info or {}), "voices": list(voices) + ([SOURCE_VOICE] if source_voice else []),
              "n_inputs": len(sources), "n_utterances": summary.utterances, "n_written": summary.written,
              "n_peak_limited": summary.peak_limited, "n_skipped": len(summary.skipped),
              "sample_rate": codec.sample_rate, "seconds": summary.seconds}
    atomic_write_json(out_dir / "resynthesize.json", record)
    mark_complete(out_dir, KIND, summary.keys, producer="speechsq resynthesize", voices=record["voices"])
    return summary


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speechsq resynthesize",
        description="Speak utterances (wavs, a data dir or extracted units) in training speakers' voices "
                    "(voice conversion) and/or their own voice (resynthesis).",
        epilog="Writes OUT/<voice>/<utt>.wav (voice 'source' for --source-voice), with --zerospeech "
               "OUT/zerospeech/test/<voice>_<file id>.wav, and synthesis.tsv, skipped, resynthesize.json, "
               "complete.json. Score them with `speechsq synthesis-measures`.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint written by speechsq train (e.g. exp/x/checkpoints/last.pt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", help="Kaldi data dir: wav.scp and utt2spk (e.g. data/test)")
    src.add_argument("--wav", help="an audio file or a folder of audio files (any format soundfile reads)")
    src.add_argument("--units", help="output folder of `speechsq extract` (indices/<utt>.npy)")
    p.add_argument("--utt2spk", help="utt2spk file giving source speakers for --wav / --units (for --source-voice)")
    p.add_argument("--speaker", nargs="+", default=[], metavar="NAME",
                   help="training speaker(s) to convert into, e.g. --speaker V001 V002")
    p.add_argument("--source-voice", action="store_true", help="also resynthesise each utterance in its own speaker's voice")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--zerospeech", action="store_true",
                   help="also write zerospeech/test/<voice>_<file id>.wav (ZeroSpeech 2019 submission synthesis part)")
    p.add_argument("--utts", nargs="+", help="only these utterances")
    p.add_argument("--limit", type=int,
                   help="only N utterances, taken from each speaker in turn (sorted ids within a speaker) so that "
                        "a subset still spans the speakers (across-speaker ABX of the conversion needs that)")
    p.add_argument("--vocoder", default="griffin_lim", help="griffin_lim (default, offline) or parallel_wavegan")
    p.add_argument("--griffin-lim-iters", type=int, default=64, help="Griffin-Lim iterations")
    p.add_argument("--vocoder-checkpoint", help="parallel_wavegan: checkpoint-*steps.pkl you trained")
    p.add_argument("--vocoder-config", help="parallel_wavegan: its config.yml (default: next to the checkpoint)")
    p.add_argument("--vocoder-stats", help="parallel_wavegan: its stats.h5 / stats.npy (default: next to the checkpoint)")
    p.add_argument("--trust-vocoder-checkpoint", action="store_true",
                   help="allow unpickling Python objects from the vocoder checkpoint (only for files you made)")
    p.add_argument("--cmvn", help="cmvn.npz of standardised (VCTK) features (default: next to the training features)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--threads", default="auto", help="intra-op threads (default: SPEECHSQ_THREADS / OMP_NUM_THREADS / cores)")
    p.add_argument("--no-progress", action="store_true")
    return p


def vocoder_options(args) -> dict:
    if args.vocoder == "griffin_lim":
        return {"n_iter": args.griffin_lim_iters}
    if args.vocoder == "parallel_wavegan":
        return {"checkpoint": args.vocoder_checkpoint, "config": args.vocoder_config, "stats": args.vocoder_stats,
                "trust_checkpoint": args.trust_vocoder_checkpoint}
    return {}


def select(sources: list[Source], utts: list[str] | None, limit: int | None) -> list[Source]:
    if utts:
        by_id = {s.utt: s for s in sources}
        missing = [u for u in utts if u not in by_id]
        if missing:
            raise ResynthesisError(f"utterance(s) {missing[:5]} are not in the input ({len(missing)} missing)")
        sources = [by_id[u] for u in utts]
    if limit is not None:
        if limit < 1:
            raise ResynthesisError(f"--limit must be >= 1, got {limit}")
        sources = take_per_speaker_in_turn(sources, limit)
    return sources


def take_per_speaker_in_turn(sources: list[Source], limit: int) -> list[Source]:
    """``limit`` sources: the first of every speaker, then the second of every speaker, ...
    (speakers in order of first appearance), returned in input order. Unknown speakers count
    as one speaker. The first N of sorted ids would often be one speaker's alone."""
    position: dict[str | None, int] = {}  # speaker -> order of first appearance
    taken: dict[str | None, int] = {}  # speaker -> sources seen so far
    keys = []  # (rank within its speaker, speaker position, index)
    for index, source in enumerate(sources):
        keys.append((taken.get(source.speaker, 0), position.setdefault(source.speaker, len(position)), index))
        taken[source.speaker] = keys[-1][0] + 1
    return [sources[index] for index in sorted(index for *_, index in sorted(keys)[:limit])]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from speechsq.api import load
    from speechsq.threads import configure_threads

    configure_threads(args.threads)
    utt2spk = None
    if args.utt2spk:
        from speechsq.data_prep.kaldi_dir import read_table

        utt2spk = read_table(args.utt2spk)
    if args.data_dir:
        sources = sources_from_data_dir(args.data_dir)
    elif args.wav:
        sources = sources_from_audio(args.wav, utt2spk)
    else:
        sources = sources_from_units(args.units, utt2spk)
    sources = select(sources, args.utts, args.limit)
    codec = load(args.checkpoint, device=args.device, cmvn=args.cmvn, vocoder=args.vocoder,
                 vocoder_options=vocoder_options(args))
    info = {"checkpoint": str(args.checkpoint), "input": args.data_dir or args.wav or args.units,
            "input_kind": "data_dir" if args.data_dir else "wav" if args.wav else "units", "vocoder": args.vocoder,
            "vocoder_options": {k: str(v) for k, v in vocoder_options(args).items() if v is not None}}
    synthesize(codec, sources, args.out, list(args.speaker), args.source_voice, args.zerospeech,
               progress=not args.no_progress, info=info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
