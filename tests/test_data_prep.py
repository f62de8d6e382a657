"""Kaldi data dirs, corpus layouts (ZeroSpeech 2019, VCTK 0.80), audio checks and the data-prep report."""

from __future__ import annotations

import json
import os
import stat
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


def test_truncation_is_found_behind_an_odd_sized_chunk(tmp_path):
    """RIFF chunks of odd size are followed by a pad byte: the walk to the data chunk must skip
    it, or a truncated file behind a LIST chunk of 7 bytes goes unnoticed."""
    import struct

    def chunk(cid: bytes, payload: bytes) -> bytes:
        return cid + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)

    samples = (tone(0.1, 16000) * 32767).astype("<i2").tobytes()  # 1600 samples, 3200 bytes
    body = b"WAVE" + chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)) + chunk(b"LIST", b"INFOabc") \
        + chunk(b"data", samples)
    full = b"RIFF" + struct.pack("<I", len(body)) + body
    (tmp_path / "full.wav").write_bytes(full)
    assert inspect_wav(tmp_path / "full.wav").frames == 1600
    (tmp_path / "cut.wav").write_bytes(full[:-100])
    with pytest.raises(AudioProblem, match="truncated: data chunk is 100 bytes longer than the file"):
        inspect_wav(tmp_path / "cut.wav")


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


def test_a_training_file_of_exactly_one_segment_is_kept(tmp_path):
    """34 frames (32 + 2 context) of 1 + len // 160: 5280 samples (0.33 s) are enough, 5279 are not.
    Test sets take any length."""
    from speechsq.data_prep.corpus import CorpusFile, SubsetListing
    from speechsq.data_prep.zerospeech19 import ZeroSpeech2019

    wav = tone(1.0, 16000)
    files = []
    for n, samples in enumerate((5280, 5279)):
        path = tmp_path / f"S001_000000000{n}.wav"
        sf.write(path, wav[:samples], 16000, subtype="PCM_16")
        files.append(CorpusFile(path.stem, "S001", str(path)))
    train = prepare.prepare_subset(SubsetListing("train", list(files), is_training=True), ZeroSpeech2019(),
                                   tmp_path / "data/train", 34, read_samples=True)
    assert train.utterances == 1 and train.hours * 3600 == pytest.approx(0.33, rel=1e-12)
    assert [(Path(s.path).name, s.reason, s.detail) for s in train.skipped] == [
        ("S001_0000000001.wav", "too-short", "0.3299 s < 0.3300 s")]
    test = prepare.prepare_subset(SubsetListing("test", list(files)), ZeroSpeech2019(), tmp_path / "data/test", 34,
                                  read_samples=True)
    assert test.utterances == 2 and test.skipped == []


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
    for n, n_test in ((16, 2), (14, 1), (5, 0)):  # round(0.1 n), not its floor: 1.6 -> 2, 1.4 -> 1
        assert len(split_utterances("p225", utts[:n])[1]) == n_test


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


def test_alignment_segments_need_a_positive_duration(tmp_path):
    (tmp_path / "ali").write_text("u1 0.0000 0.1000 SIL\nu1 0.1000 0.1000 a\n")
    with pytest.raises(AlignmentError, match=r"ali:2: bad segment times 0.1 0.1"):
        read_alignments(tmp_path / "ali")


def test_copy_lines_keeps_only_kept_utterances_and_the_items_header(tmp_path):
    """The first line of an ``ali`` file is a segment like any other (dropped when its utterance
    is); only ``items`` has a header to keep."""
    (tmp_path / "ali").write_text("gone 0.0 0.1 SIL\nkept 0.0 0.1 SIL\ngone 0.1 0.2 a\n")
    assert prepare.copy_lines_of(tmp_path / "ali", tmp_path / "ali.out", {"kept"}, header=False) == 2
    assert (tmp_path / "ali.out").read_text() == "kept 0.0 0.1 SIL\n"
    (tmp_path / "items").write_text(ITEM_HEADER + "\ngone 0.1 0.2 a x y S\nkept 0.1 0.2 a x y S\n")
    assert prepare.copy_lines_of(tmp_path / "items", tmp_path / "items.out", {"kept"}, header=True) == 1
    assert (tmp_path / "items.out").read_text() == ITEM_HEADER + "\nkept 0.1 0.2 a x y S\n"


# ------------------------------------------------------------------- silence on the 16-bit scale
def write_lsb(path: Path, lsb_values: np.ndarray, sr: int = 16000) -> Path:
    """A PCM_16 file holding exactly these integer sample values (in LSB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(lsb_values, np.int16), sr, subtype="PCM_16")
    return path


def alternating(lsb: int, n: int = 16000) -> np.ndarray:
    return lsb * np.where(np.arange(n) % 2 == 0, 1, -1)


def test_silence_is_defined_on_the_16_bit_scale(tmp_path):
    from speechsq.data_prep.audio import SILENT_RMS_LSB, rms_lsb

    assert SILENT_RMS_LSB == 8
    dither = np.random.default_rng(0).integers(-1, 2, size=16000)  # +-1 LSB: what a "silent" DAW export holds
    for name, values in {"zeros": np.zeros(16000), "dither": dither, "rms8": alternating(8)}.items():
        with pytest.raises(AudioProblem, match="silent"):
            load_wav(write_lsb(tmp_path / f"{name}.wav", values))
    wav, _ = load_wav(write_lsb(tmp_path / "rms9.wav", alternating(9)))  # first level above the floor: kept
    assert rms_lsb(wav) == 9.0 and rms_lsb(alternating(8) / 32768) == 8.0
    with pytest.raises(AudioProblem, match=r"RMS 8\.00 LSB, peak 8 LSB"):
        load_wav(tmp_path / "rms8.wav")


def test_quiet_speech_at_minus_50_dbfs_is_kept(tmp_path):
    from speechsq.features import build_pipeline

    t = np.arange(16000) / 16000
    f0 = 120 + 20 * np.sin(2 * np.pi * 2 * t)
    speech = sum(np.sin(k * 2 * np.pi * np.cumsum(f0) / 16000) / k for k in range(1, 20)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    peak = 10 ** (-50 / 20)  # -50 dBFS = 103.6 LSB
    path = tmp_path / "quiet.wav"
    sf.write(path, (speech / np.abs(speech).max() * peak).astype(np.float32), 16000, subtype="PCM_16")
    wav, _ = load_wav(path)
    assert np.abs(wav).max() * 32768 == 104.0  # rounded to the nearest LSB
    feats = build_pipeline("zerospeech19")(path)
    assert feats.shape == (101, 80) and np.isfinite(feats).all()


def test_dithered_silent_test_wav_is_skipped_not_normalised(tmp_path):
    root = tmp_path / "english"
    make_zerospeech_tree(root)
    write_lsb(root / "test/S003_0000000202.wav", np.random.default_rng(1).integers(-1, 2, size=16000))
    report = prepare.prepare("zerospeech19", root, tmp_path / "data")
    assert [(Path(s.path).name, s.reason) for s in report.subsets["test"].skipped] == [("S003_0000000202.wav", "silent")]


# ------------------------------------------------------------------------- file names: ASCII only
@pytest.mark.parametrize("name", ["S001_٩٠٠٠٠٠٠٠٠٧.wav", "S001_０１２３４５６７８９.wav", "S001_0123456789.wav\n",
                                  "S001_012345678.wav", "S00_0123456789.wav", "Ş001_0123456789.wav"])
def test_zerospeech_names_accept_ascii_digits_only(name):
    from speechsq.data_prep.zerospeech19 import parse_file_name

    assert parse_file_name(name) is None
    assert parse_file_name("S001_0123456789.wav") == ("S001", "S001_0123456789")


def test_unicode_digit_file_is_a_bad_name_skip(tmp_path):
    root = tmp_path / "english"
    make_zerospeech_tree(root)
    write_wav(root / "test/S002_٩٠٠٠٠٠٠٠٠٧.wav")
    report = prepare.prepare("zerospeech19", root, tmp_path / "data")
    assert [(Path(s.path).name, s.reason) for s in report.subsets["test"].skipped] == [("S002_٩٠٠٠٠٠٠٠٠٧.wav", "bad-name")]
    assert KaldiDataDir.read(tmp_path / "data/test").utterances == ["S002_0000000200", "S003_0000000200", "S003_0000000201"]


def test_an_upper_case_extension_is_reported_not_ignored(tmp_path):
    """A .WAV file is audio that does not follow the <SPK>_<10 digits>.wav naming: a bad-name
    skip in the report, not silently left out like a README."""
    from speechsq.data_prep.corpus import SubsetListing
    from speechsq.data_prep.zerospeech19 import list_folder

    write_wav(tmp_path / "V001_0000000001.wav")
    write_wav(tmp_path / "V001_0000000002.WAV")
    (tmp_path / "README.txt").write_text("not audio")
    listing = SubsetListing("train")
    list_folder(tmp_path, listing)
    assert [f.utt for f in listing.files] == ["V001_0000000001"]
    assert [(Path(s.path).name, s.reason) for s in listing.skipped] == [("V001_0000000002.WAV", "bad-name")]


def test_vctk_names_accept_ascii_digits_only(tmp_path):
    make_vctk_tree(tmp_path / "vctk", speakers=("p225",), n=10)
    write_wav(tmp_path / "vctk/wav48/p225/p225_٠١١.wav", seconds=0.5, sr=48000)
    report = prepare.prepare("vctk", tmp_path / "vctk", tmp_path / "data")
    assert [(Path(s.path).name, s.reason) for s in report.subsets["train"].skipped] == [("p225_٠١١.wav", "bad-name")]
    assert report.subsets["train"].utterances + report.subsets["test"].utterances == 10


# --------------------------------------------------- one unusable test wav: skipped everywhere
def tree_with_abx_files(root: Path) -> None:
    """make_zerospeech_tree + alignments of the three test files and their ABX items."""
    make_zerospeech_tree(root)
    (root / "alignments").mkdir()
    phones = [PhoneSegment(0, 0.1, "SIL"), PhoneSegment(0.1, 0.2, "a"), PhoneSegment(0.2, 0.3, "b"),
              PhoneSegment(0.3, 0.4, "c"), PhoneSegment(0.4, 0.5, "d"), PhoneSegment(0.5, 1.0, "SIL")]
    ali = {u: phones for u in ("S002_0000000200", "S003_0000000200")}
    ali["S003_0000000201"] = [PhoneSegment(0, 0.05, "a"), PhoneSegment(0.05, 0.1, "b"), PhoneSegment(0.1, 0.2, "c")]
    write_alignments(root / "alignments/test.ali", ali)
    utt2spk = {u: u[:4] for u in ali}
    write_items(root / "alignments/test.item", items_from_alignments(ali, utt2spk))


def test_unusable_test_wav_drops_its_items_and_alignment_lines(tmp_path):
    root = tmp_path / "english"
    tree_with_abx_files(root)
    (root / "test/S003_0000000200.wav").write_bytes(b"RIFF\x00\x00")  # unusable
    out = tmp_path / "data"
    assert prepare.main(["--corpus", "zerospeech19", "--root", str(root), "--out", str(out)]) == 0
    test = KaldiDataDir.read(out / "test")
    assert test.utterances == ["S002_0000000200", "S003_0000000201"]
    assert validate_data_dir(out / "test").ok
    items = read_items(out / "test/items")
    assert [(i.file, i.phone) for i in items] == [("S002_0000000200", "b"), ("S002_0000000200", "c"),
                                                 ("S003_0000000201", "b")]
    assert set(read_alignments(out / "test/ali")) == {"S002_0000000200", "S003_0000000201"}
    report = json.loads((out / "prep_report.json").read_text())
    assert report["subsets"]["test"]["dropped_lines"] == {"ali": 6, "items": 2}
    assert [(Path(s["path"]).name, s["reason"]) for s in report["subsets"]["test"]["skipped"]] == [
        ("S003_0000000200.wav", "not-audio")]
    assert report["error"] is None
    marker = json.loads((out / "test/complete.json").read_text())
    assert (marker["kind"], marker["count"], marker["set"], marker["skipped"]) == ("data_dir", 2, "test", 1)
    assert marker["dropped_lines"] == {"ali": 6, "items": 2}


def data_dir_contents(out: Path) -> dict:
    """Every file under ``out`` but the report; the markers without their ``finished`` time (the
    sets a re-run rewrites before failing are rewritten identically, but maybe a second later)."""
    contents = {}
    for p in out.rglob("*"):
        if p.is_file() and p.name != "prep_report.json":
            data = p.read_bytes()
            if p.name == "complete.json":
                data = {k: v for k, v in json.loads(data).items() if k != "finished"}
            contents[p.relative_to(out)] = data
    return contents


def test_data_dirs_are_replaced_atomically(tmp_path, monkeypatch):
    root = tmp_path / "english"
    make_zerospeech_tree(root)
    out = tmp_path / "data"
    prepare.prepare("zerospeech19", root, out)
    before = data_dir_contents(out)
    write_wav(root / "test/S004_0000000200.wav")  # the corpus changed ...

    real_write = KaldiDataDir.write

    def crash_while_writing(self, directory):  # ... and the next run dies half-way through data/test
        if Path(directory).name.startswith(".test.partial-"):
            (Path(directory) / "wav.scp").write_text("half written\n")
            raise OSError(28, "No space left on device")
        return real_write(self, directory)

    monkeypatch.setattr(KaldiDataDir, "write", crash_while_writing)
    from speechsq.errors import DiskFullError

    with pytest.raises(DiskFullError, match="No space left on device: .*data/test$"):
        prepare.prepare("zerospeech19", root, out)
    assert data_dir_contents(out) == before  # every old data dir intact, nothing half-written, no leftovers
    assert sorted(p.name for p in out.iterdir()) == ["parallel", "parallel_source", "prep_report.json", "test", "train"]
    report = json.loads((out / "prep_report.json").read_text())
    assert report["error"].startswith("DiskFullError: No space left on device")
    assert list(report["subsets"]) == ["train", "parallel", "parallel_source"]  # the sets done before the failure


def test_data_dirs_get_the_umask_permissions_not_mkdtemps(tmp_path):
    root = tmp_path / "english"
    make_zerospeech_tree(root)
    old = os.umask(0o027)
    try:
        prepare.prepare("zerospeech19", root, tmp_path / "data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data/test").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "data/test/wav.scp").stat().st_mode) == 0o640


def test_set_without_usable_files_removes_its_old_dir_and_fails(tmp_path):
    root = tmp_path / "english"
    make_zerospeech_tree(root)
    out = tmp_path / "data"
    prepare.prepare("zerospeech19", root, out)
    for wav in (root / "test").glob("*.wav"):
        sf.write(wav, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(kaldi_dir.DataDirError, match=r"no usable file in set\(s\) test .*prep_report.json"):
        prepare.main(["--corpus", "zerospeech19", "--root", str(root), "--out", str(out)])
    assert not (out / "test").exists()  # a stale data dir would not match the corpus any more
    report = json.loads((out / "prep_report.json").read_text())
    assert [s["reason"] for s in report["subsets"]["test"]["skipped"]] == ["silent"] * 3


def test_prepare_refuses_to_replace_a_directory_that_is_not_a_data_dir(tmp_path):
    from speechsq.data_prep.staging import OutputDirError

    root = tmp_path / "english"
    make_zerospeech_tree(root)
    (tmp_path / "data/test").mkdir(parents=True)
    (tmp_path / "data/test/notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="data/test exists and does not look like a Kaldi data directory"):
        prepare.prepare("zerospeech19", root, tmp_path / "data")
    assert (tmp_path / "data/test/notes.txt").read_text() == "mine"


def test_validate_data_dir_cli_errors_and_marker_warning(tmp_path):
    with pytest.raises(kaldi_dir.DataDirError, match="nope: no such data directory"):
        kaldi_dir.main([str(tmp_path / "nope")])
    root = tmp_path / "english"
    make_zerospeech_tree(root)
    prepare.prepare("zerospeech19", root, tmp_path / "data")
    assert validate_data_dir(tmp_path / "data/test").warnings == []
    lines = (tmp_path / "data/test/utt2spk").read_text().splitlines()
    (tmp_path / "data/test/utt2spk").write_text("\n".join(lines[:2]) + "\n")  # edited by hand
    (tmp_path / "data/test/spk2utt").write_text("S002 S002_0000000200\nS003 S003_0000000200\n")
    (tmp_path / "data/test/wav.scp").write_text("".join(
        line + "\n" for line in (tmp_path / "data/test/wav.scp").read_text().splitlines()[:2]))
    report = validate_data_dir(tmp_path / "data/test")
    assert report.ok and report.warnings == [
        "complete.json lists 3 utterances, utt2spk 2: the data dir was changed after it was written"]
