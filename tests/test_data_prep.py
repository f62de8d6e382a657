"""Kaldi data dirs, corpus layouts (ZeroSpeech 2019, VCTK 0.80), audio checks and the data-prep report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechsq.data_prep import kaldi_dir, prepare
from speechsq.data_prep.alignments import (
    ITEM_HEADER,
    AlignmentError,
    PhoneSegment,
    items_from_alignments,
    read_alignments,
    read_items,
    write_alignments,
    write_items,
)
from speechsq.data_prep.audio import AudioProblem, inspect_wav, load_wav
from speechsq.data_prep.corpus import CorpusLayoutError
from speechsq.data_prep.kaldi_dir import KaldiDataDir, c_sorted, validate_data_dir
from speechsq.data_prep.vctk import split_utterances


def tone(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_wav(path: Path, seconds: float = 1.0, sr: int = 16000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sr, seed), sr, subtype="PCM_16")
    return path


def make_zerospeech_tree(root: Path) -> dict[str, str]:
    """A small ZeroSpeech 2019 english/ tree with one file for each bad case; returns
    {file name: expected skip reason}."""
    for spk in ("V001", "V002"):
        for k in range(2):
            write_wav(root / "train/voice" / f"{spk}_{k:010d}.wav", seed=k)
    for spk in ("S015", "S020", "S021"):
        for k in range(2):
            write_wav(root / "train/unit" / f"{spk}_{10 + k:010d}.wav", seed=k)
    write_wav(root / "train/parallel/source/S015_0000000100.wav")
    write_wav(root / "train/parallel/voice/V001_0000000100.wav")
    for spk in ("S002", "S003"):
        write_wav(root / "test" / f"{spk}_0000000200.wav")
    # a short test utterance is kept: only training sets need a full segment
    write_wav(root / "test/S003_0000000201.wav", seconds=0.2)

    unit = root / "train/unit"
    bad = {}
    sf.write(unit / "S030_0000000001.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    bad["S030_0000000001.wav"] = "silent"
    sf.write(unit / "S031_0000000001.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    bad["S031_0000000001.wav"] = "empty"
    full = write_wav(unit / "S032_0000000001.wav").read_bytes()
    (unit / "S032_0000000001.wav").write_bytes(full[: len(full) // 2])
    bad["S032_0000000001.wav"] = "truncated"
    (unit / "S033_0000000001.wav").write_text("this is not a wav file\n")
    bad["S033_0000000001.wav"] = "not-audio"
    sf.write(unit / "S034_0000000001.wav", np.stack([tone(1, 16000)] * 2, axis=1), 16000)
    bad["S034_0000000001.wav"] = "stereo"
    write_wav(unit / "S035_0000000001.wav", sr=22050)
    bad["S035_0000000001.wav"] = "wrong-sample-rate"
    write_wav(unit / "S036_0000000001.wav", seconds=0.2)  # < 33 hops of 10 ms
    bad["S036_0000000001.wav"] = "too-short"
    write_wav(unit / "S37_0000000001.wav")  # 3-character speaker prefix
    bad["S37_0000000001.wav"] = "bad-name"
    write_wav(unit / "S038_12345.wav")  # not 10 digits
    bad["S038_12345.wav"] = "bad-name"
    (unit / "README.txt").write_text("not an utterance")  # ignored, not a wav
    return bad


# ---------------------------------------------------------------------------------- Kaldi dirs
def test_c_sort_is_byte_order():
    assert c_sorted(["a", "B", "_x", "A1", "a-b"]) == ["A1", "B", "_x", "a", "a-b"]


def test_data_dir_round_trip_and_spk2utt(tmp_path):
    utt2spk = {"b_2": "b", "a_1": "a", "b_1": "b", "A_3": "A"}
    d = KaldiDataDir({u: f"/x/{u}.wav" for u in utt2spk}, utt2spk, text={"a_1": "hello world"})
    d.write(tmp_path / "d")
    back = KaldiDataDir.read(tmp_path / "d")
    assert back == d
    assert (tmp_path / "d/spk2utt").read_text() == "A A_3\na a_1\nb b_1 b_2\n"
    assert (tmp_path / "d/utt2spk").read_text().splitlines()[0] == "A_3 A"
    assert validate_data_dir(tmp_path / "d").ok


def test_validator_reports_inconsistencies(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "wav.scp").write_text("s1_b /b.wav\ns1_a /a.wav\ns2_c /c.wav\n")  # unsorted
    (d / "utt2spk").write_text("s1_a s1\ns1_b s1\nzz_d s2\n")  # zz_d missing from wav.scp
    (d / "spk2utt").write_text("s1 s1_a s1_b\ns3 s2_c\n")  # wrong speaker set
    report = validate_data_dir(d)
    text = str(report)
    assert not report.ok
    assert "wav.scp is not sorted" in text
    assert "wav.scp and utt2spk list different utterances" in text
    assert "spk2utt and utt2spk list different speakers" in text
    assert "does not start with its speaker id" in text  # zz_d / s2 (a warning)
    assert kaldi_dir.main([str(d)]) == 1
    assert not validate_data_dir(tmp_path / "missing").ok


def test_validator_requires_speaker_prefix_sort_consistency(tmp_path):
    d = tmp_path / "d"
    KaldiDataDir({"u1": "/a", "u2": "/b"}, {"u1": "z", "u2": "a"}).write(d)
    report = validate_data_dir(d)
    assert any("sorting by speaker and by utterance disagree" in e for e in report.errors)


def test_duplicate_keys_are_errors(tmp_path):
    (tmp_path / "utt2spk").write_text("a_1 a\na_1 a\n")
    with pytest.raises(kaldi_dir.DataDirError, match="duplicate key"):
        kaldi_dir.read_table(tmp_path / "utt2spk")


# ------------------------------------------------------------------------------ audio checks
def test_audio_checks_each_bad_case(tmp_path):
    bad = make_zerospeech_tree(tmp_path)
    unit = tmp_path / "train/unit"
    for name, reason in bad.items():
        if reason in ("bad-name", "too-short"):
            continue
        with pytest.raises(AudioProblem, match=reason):
            load_wav(unit / name, expected_sample_rate=16000)
    with pytest.raises(AudioProblem, match="missing"):
        inspect_wav(tmp_path / "nope.wav")
    with pytest.raises(AudioProblem, match="too-short"):
        inspect_wav(unit / "S036_0000000001.wav", min_duration=0.33)
    wav, sr = load_wav(unit / "S015_0000000010.wav", expected_sample_rate=16000)
    assert sr == 16000 and wav.dtype == np.float32 and len(wav) == 16000


# ------------------------------------------------------------------------------- ZeroSpeech
def test_prepare_zerospeech_sets_and_report(tmp_path):
    bad = make_zerospeech_tree(tmp_path / "english")
    out = tmp_path / "data"
    assert prepare.main(["--corpus", "zerospeech19", "--root", str(tmp_path / "english"), "--out", str(out)]) == 0
    train = KaldiDataDir.read(out / "train")
    assert train.speakers == ["S015", "S020", "S021", "V001", "V002"]
    assert len(train.utterances) == 10
    assert set(KaldiDataDir.read(out / "parallel").utterances) == {"V001_0000000100"}
    assert set(KaldiDataDir.read(out / "parallel_source").utterances) == {"S015_0000000100"}
    assert KaldiDataDir.read(out / "test").utterances == ["S002_0000000200", "S003_0000000200", "S003_0000000201"]
    for name in ("train", "parallel", "parallel_source", "test"):
        assert validate_data_dir(out / name, check_audio=True).ok

    report = json.loads((out / "prep_report.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["subsets"]["train"]["skipped"]}
    assert skipped == bad
    assert all(s["detail"] for s in report["subsets"]["train"]["skipped"])
    wav_scp = (out / "train/wav.scp").read_text()
    assert not any(name in wav_scp for name in bad)


def test_prepare_zerospeech_copies_abx_files(tmp_path):
    root = tmp_path / "english"
    make_zerospeech_tree(root)
    (root / "alignments").mkdir()
    ali = {"S002_0000000200": [PhoneSegment(0, 0.1, "SIL"), PhoneSegment(0.1, 0.2, "a"),
                               PhoneSegment(0.2, 0.3, "b"), PhoneSegment(0.3, 0.4, "c"), PhoneSegment(0.4, 1.0, "SIL")]}
    write_alignments(root / "alignments/test.ali", ali)
    write_items(root / "alignments/test.item", items_from_alignments(ali, {"S002_0000000200": "S002"}))
    prepare.prepare("zerospeech19", root, tmp_path / "data")
    assert read_alignments(tmp_path / "data/test/ali") == ali
    assert [i.phone for i in read_items(tmp_path / "data/test/items")] == ["b"]
    assert validate_data_dir(tmp_path / "data/test").ok


def test_missing_directory_is_a_clear_error(tmp_path):
    make_zerospeech_tree(tmp_path / "english")
    (tmp_path / "english/test").rename(tmp_path / "english/test_moved")
    with pytest.raises(CorpusLayoutError, match="missing directory .*test"):
        prepare.prepare("zerospeech19", tmp_path / "english", tmp_path / "data")
    with pytest.raises(CorpusLayoutError, match="missing directory"):
        prepare.prepare("vctk", tmp_path / "nowhere", tmp_path / "data")


# ------------------------------------------------------------------------------------- VCTK
def make_vctk_tree(root: Path, speakers=("p225", "p226", "p227"), n=20) -> None:
    for spk in speakers:
        for k in range(1, n + 1):
            write_wav(root / "wav48" / spk / f"{spk}_{k:03d}.wav", seconds=0.5, sr=48000, seed=k)
            txt = root / "txt" / spk / f"{spk}_{k:03d}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text(f"Sentence number {k}.\n")


def test_vctk_split_is_deterministic_stratified_and_disjoint(tmp_path):
    make_vctk_tree(tmp_path / "vctk")
    write_wav(tmp_path / "vctk/wav48/p225/p226_999.wav", seconds=0.5, sr=48000)  # wrong speaker folder
    prepare.prepare("vctk", tmp_path / "vctk", tmp_path / "a")
    prepare.prepare("vctk", tmp_path / "vctk", tmp_path / "b")
    for name in ("train", "test", "prep_report.json"):
        for f in ("wav.scp", "utt2spk", "spk2utt", "text") if name != "prep_report.json" else ("",):
            a, b = tmp_path / "a" / name / f, tmp_path / "b" / name / f
            assert a.read_text().replace(str(tmp_path / "a"), "") == b.read_text().replace(str(tmp_path / "b"), "")
    train, test = KaldiDataDir.read(tmp_path / "a/train"), KaldiDataDir.read(tmp_path / "a/test")
    assert not set(train.utterances) & set(test.utterances)
    assert len(train.utterances) + len(test.utterances) == 60
    assert {spk: len(u) for spk, u in test.spk2utt.items()} == {"p225": 2, "p226": 2, "p227": 2}
    assert train.text["p225_001"] == "Sentence number 1." or test.text["p225_001"] == "Sentence number 1."
    report = json.loads((tmp_path / "a/prep_report.json").read_text())
    assert [s["reason"] for s in report["subsets"]["train"]["skipped"]] == ["bad-name"]


def test_vctk_split_does_not_move_when_a_file_goes_bad():
    utts = [f"p225_{k:03d}" for k in range(1, 41)]
    train, test = split_utterances("p225", utts)
    assert len(test) == 4 and sorted(train + test) == utts
    assert split_utterances("p225", list(reversed(utts))) == (train, test)  # order-free


# ------------------------------------------------------------------------------- ABX files
def test_items_exclude_silence_and_file_edges(tmp_path):
    segs = [PhoneSegment(0.0, 0.1, "SIL"), PhoneSegment(0.1, 0.2, "h"), PhoneSegment(0.2, 0.3, "@"),
            PhoneSegment(0.3, 0.4, "l"), PhoneSegment(0.4, 0.5, "SIL"), PhoneSegment(0.5, 0.6, "oU"),
            PhoneSegment(0.6, 0.7, "d"), PhoneSegment(0.7, 0.8, "i"), PhoneSegment(0.8, 0.9, "SIL")]
    items = items_from_alignments({"S1_1": segs}, {"S1_1": "S1"})
    assert [(i.prev_phone, i.phone, i.next_phone) for i in items] == [("h", "@", "l"), ("oU", "d", "i")]
    write_items(tmp_path / "items", items)
    assert (tmp_path / "items").read_text().splitlines()[0] == ITEM_HEADER
    assert read_items(tmp_path / "items") == items
    (tmp_path / "bad").write_text("#file onset offset\n")
    with pytest.raises(AlignmentError, match="header"):
        read_items(tmp_path / "bad")
