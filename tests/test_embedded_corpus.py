"""The espeak-ng corpus generator: layout, alignments, ABX items, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechsq.data_prep import embedded_corpus, prepare
from speechsq.data_prep.alignments import ITEM_HEADER, items_from_alignments, read_alignments, read_items
from external_tools import require_espeak
from speechsq.data_prep.espeak import Espeak, EspeakError, PhoneEvent, VoiceSpec
from speechsq.data_prep.kaldi_dir import KaldiDataDir, validate_data_dir

require_espeak()  # fails (not skips) unless espeak-ng is really absent and SPEECHSQ_ALLOW_SKIP=1

TINY = 24  # utterances: every speaker still appears


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "english"
    embedded_corpus.make_corpus(root, seed=3, n_utterances=TINY, nj=1, progress=False)
    return root


def speakers_in(folder: Path) -> set[str]:
    return {p.name[:4] for p in folder.glob("*.wav")}


def test_layout_mirrors_zerospeech2019(corpus):
    name = re.compile(r"^[A-Z0-9]{4}_\d{10}\.wav$")
    wavs = list(corpus.rglob("*.wav"))
    assert wavs and all(name.match(p.name) for p in wavs)
    for p in wavs:
        info = sf.info(str(p))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    voice, unit = speakers_in(corpus / "train/voice"), speakers_in(corpus / "train/unit")
    test = speakers_in(corpus / "test")
    assert voice == {"V001", "V002"}
    assert unit == {f"S{k:03d}" for k in range(1, 11)}  # 24 utterances: one per unit speaker
    assert test == {"S101", "S102", "S103", "S104"}
    # 2 voices x 2 + 10 unit speakers x 1 + 1 parallel pair + 4 test speakers x 2 sentences = 24
    counts = {folder: len(list((corpus / folder).glob("*.wav"))) for folder in embedded_corpus.FOLDERS.values()}
    assert counts == {"train/voice": 4, "train/unit": 10, "train/parallel/source": 1, "train/parallel/voice": 1, "test": 8}
    # parallel: same 10-digit ids, unit speakers in source, target voices in voice
    source = {p.name[5:]: p.name[:4] for p in (corpus / "train/parallel/source").glob("*.wav")}
    target = {p.name[5:]: p.name[:4] for p in (corpus / "train/parallel/voice").glob("*.wav")}
    assert source and source.keys() == target.keys()
    assert set(source.values()) <= unit and set(target.values()) <= voice
    texts = json.loads((corpus / "corpus_info.json").read_text())["texts"]
    for number, spk in source.items():
        assert texts[f"{spk}_{number[:-4]}"] == texts[f"{target[number]}_{number[:-4]}"]


def test_alignments_cover_each_wav(corpus):
    for set_name, folders in (("train", ["train/voice", "train/unit"]), ("test", ["test"]),
                              ("parallel", ["train/parallel/voice"])):
        ali = read_alignments(corpus / "alignments" / f"{set_name}.ali")
        wavs = {p.stem: p for f in folders for p in (corpus / f).glob("*.wav")}
        assert set(ali) == set(wavs)
        for utt, segs in ali.items():
            duration = sf.info(str(wavs[utt])).duration
            assert segs[0].onset == 0.0
            assert abs(segs[-1].offset - duration) <= 0.020
            assert all(abs(a.offset - b.onset) < 1e-3 for a, b in zip(segs, segs[1:]))  # contiguous
            assert sum(not s.is_silence for s in segs) >= 5


def test_alignments_are_acoustically_meaningful(corpus):
    """Silence segments are quiet, phone segments are not (timings match the audio)."""
    ali = read_alignments(corpus / "alignments/test.ali")
    silence, phones = [], []
    for utt, segs in ali.items():
        wav, sr = sf.read(str(corpus / "test" / f"{utt}.wav"))
        for s in segs:
            rms = np.sqrt(np.mean(wav[int(s.onset * sr): int(s.offset * sr)] ** 2))
            (silence if s.is_silence else phones).append(rms)
    assert np.median(phones) > 30 * np.median(silence)


def test_abx_items_refer_to_real_files_and_times(corpus):
    assert (corpus / "alignments/test.item").read_text().splitlines()[0] == ITEM_HEADER
    items = read_items(corpus / "alignments/test.item")
    ali = read_alignments(corpus / "alignments/test.ali")
    assert items == items_from_alignments(ali, {utt: utt[:4] for utt in ali})
    for item in items:
        wav = corpus / "test" / f"{item.file}.wav"
        assert wav.is_file() and item.speaker == item.file[:4]
        assert 0 < item.onset < item.offset <= sf.info(str(wav)).duration
        assert "SIL" not in (item.phone, item.prev_phone, item.next_phone)
        segs = ali[item.file]
        k = next(i for i, s in enumerate(segs) if abs(s.onset - item.onset) < 1e-6)
        assert 0 < k < len(segs) - 1  # never the first or last segment of a file
        assert (segs[k - 1].phone, segs[k].phone, segs[k + 1].phone) == (item.prev_phone, item.phone, item.next_phone)
    # shared sentences: the same phone triple occurs for several test speakers (ABX across speakers)
    by_triple: dict[tuple, set] = {}
    for item in items:
        by_triple.setdefault((item.prev_phone, item.phone, item.next_phone), set()).add(item.speaker)
    assert max(len(s) for s in by_triple.values()) == 4  # all four test speakers


def test_same_seed_same_bytes_other_seed_differs(tmp_path, corpus):
    again = tmp_path / "again"
    embedded_corpus.make_corpus(again, seed=3, n_utterances=TINY, nj=2, progress=False)  # nj differs too
    assert tree_hashes(again) == tree_hashes(corpus)
    other = tmp_path / "other"
    embedded_corpus.make_corpus(other, seed=4, n_utterances=TINY, nj=1, progress=False)
    assert tree_hashes(other) != tree_hashes(corpus)
    with pytest.raises(FileExistsError, match="not empty"):
        embedded_corpus.make_corpus(other, seed=4, n_utterances=TINY, nj=1, progress=False)


def test_prepare_data_exposes_items_and_alignments(tmp_path, corpus):
    report = prepare.prepare("zerospeech19", corpus, tmp_path / "data")
    assert all(not sub.skipped for sub in report.subsets.values())
    for name in ("train", "parallel", "parallel_source", "test"):
        assert validate_data_dir(tmp_path / "data" / name).ok
    test = KaldiDataDir.read(tmp_path / "data/test")
    assert read_items(tmp_path / "data/test/items") == read_items(corpus / "alignments/test.item")  # nothing dropped
    assert {i.file for i in read_items(tmp_path / "data/test/items")} == set(test.utterances)
    assert set(read_alignments(tmp_path / "data/test/ali")) == set(test.utterances)
    assert KaldiDataDir.read(tmp_path / "data/train").speakers == ["S001", "S002", "S003", "S004", "S005", "S006",
                                                                   "S007", "S008", "S009", "S010", "V001", "V002"]


def test_vctk_layout(tmp_path):
    root = tmp_path / "vctk"
    assert embedded_corpus.main(["--out", str(root), "--layout", "vctk", "--utterances", "16", "--nj", "1"]) == 0
    wavs = sorted((root / "wav48").rglob("*.wav"))
    assert len(wavs) == 2 * len(embedded_corpus.SPEAKERS)
    for p in wavs:
        assert re.match(rf"^{p.parent.name}_\d{{3}}\.wav$", p.name)
        assert sf.info(str(p)).samplerate == 48000
        assert (root / "txt" / p.parent.name / f"{p.stem}.txt").read_text().strip()
    report = prepare.prepare("vctk", root, tmp_path / "data")
    assert report.subsets["train"].utterances + report.subsets["test"].utterances == len(wavs)


def test_phone_segments_from_events():
    events = [PhoneEvent(441, "h"), PhoneEvent(2205, "@"), PhoneEvent(4410, "_:"), PhoneEvent(6615, "_"),
              PhoneEvent(8820, "l")]
    segs = embedded_corpus.phone_segments(events, 22050, duration=0.5)
    assert [(s.phone, round(s.onset, 3), round(s.offset, 3)) for s in segs] == [
        ("SIL", 0.0, 0.02), ("h", 0.02, 0.1), ("@", 0.1, 0.2), ("SIL", 0.2, 0.4), ("l", 0.4, 0.5)]


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(EspeakError, match="unknown espeak-ng voice"):
        Espeak().synthesize("hello", VoiceSpec("xx-nonexistent+m1"))
