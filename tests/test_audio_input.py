"""Audio input of any format, rate and channel count: discovery, loading with conversion notes,
featurisation once per file, skipped files listed, strict sample rates."""

from __future__ import annotations

import logging
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from speechsq.data_prep.audio import (
    AudioInputError,
    AudioProblem,
    AudioSummary,
    Conversion,
    audio_extensions,
    discover_audio,
    read_audio,
)
from speechsq.errors import MismatchError
from speechsq.features import build_pipeline
from speechsq.features.audio_input import featurize_audio


def voiced(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def put(path: Path, wav: np.ndarray, sr: int = 16000, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, sr, **kw)
    return path


# ---------------------------------------------------------------------------- discovery
def test_discover_a_folder_any_format_any_case(tmp_path):
    put(tmp_path / "a.wav", voiced(0.5, 16000))
    put(tmp_path / "sub/B.WAV", voiced(0.5, 16000))
    put(tmp_path / "sub/deeper/c.flac", voiced(0.5, 16000), format="FLAC")
    put(tmp_path / "d.Ogg", voiced(0.5, 16000), format="OGG")
    put(tmp_path / "my take 2.wav", voiced(0.5, 16000))
    put(tmp_path / "._a.wav", voiced(0.5, 16000))  # macOS resource fork: hidden, ignored
    (tmp_path / "README.txt").write_text("not audio")
    (tmp_path / "feats.npy").write_bytes(b"\x93NUMPY")
    found = discover_audio(tmp_path)
    assert found == {"B": tmp_path / "sub/B.WAV", "a": tmp_path / "a.wav", "c": tmp_path / "sub/deeper/c.flac",
                     "d": tmp_path / "d.Ogg", "my_take_2": tmp_path / "my take 2.wav"}
    assert list(found) == ["B", "a", "c", "d", "my_take_2"]  # sorted by utterance id
    assert {".wav", ".flac", ".ogg", ".mp3", ".aiff"} <= audio_extensions()
    assert ".mat" not in audio_extensions() and ".txt" not in audio_extensions()


def test_discover_one_file_whatever_its_extension(tmp_path):
    path = put(tmp_path / "take.audio", voiced(0.5, 16000), format="WAV")
    assert discover_audio(path) == {"take": path}


def test_duplicate_stems_are_an_error_naming_both_files(tmp_path):
    put(tmp_path / "x/utt1.wav", voiced(0.5, 16000))
    put(tmp_path / "y/utt1.flac", voiced(0.5, 16000), format="FLAC")
    with pytest.raises(AudioInputError, match=r"x/utt1\.wav and .*y/utt1\.flac would both be utterance 'utt1'"):
        discover_audio(tmp_path)


def test_discover_errors(tmp_path):
    with pytest.raises(AudioInputError, match="nope does not exist"):
        discover_audio(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/notes.txt").write_text("x")
    with pytest.raises(AudioInputError, match="no audio files under .*empty"):
        discover_audio(tmp_path / "empty")


# ------------------------------------------------------------------------------ loading
def test_read_audio_mixes_down_and_resamples_and_says_so(tmp_path):
    left, right = voiced(0.5, 8000, 1), voiced(0.5, 8000, 2)
    path = put(tmp_path / "stereo8k.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    audio = read_audio(path, 16000)
    assert audio.conversion == Conversion(channels=2, sample_rate=8000, target_rate=16000)
    assert audio.conversion.describe() == "mixed 2 channels down to mono, resampled 8000 Hz -> 16000 Hz"
    expected = librosa.resample((left + right) / 2, orig_sr=8000, target_sr=16000, res_type="soxr_hq")
    np.testing.assert_array_equal(audio.wav, expected)
    same = read_audio(put(tmp_path / "mono.wav", left, 16000, subtype="FLOAT"), 16000)
    assert same.conversion.describe() == "unchanged"
    np.testing.assert_array_equal(same.wav, left)


def test_read_audio_flac_equals_wav(tmp_path):
    wav = (voiced(0.5, 16000) * 32767).astype(np.int16)  # integers: both encoders store them exactly
    a = read_audio(put(tmp_path / "a.wav", wav, subtype="PCM_16"), 16000).wav
    b = read_audio(put(tmp_path / "b.flac", wav, format="FLAC", subtype="PCM_16"), 16000).wav
    np.testing.assert_array_equal(a, b)  # both lossless 16-bit
    np.testing.assert_array_equal(a, wav / np.float32(32768))


@pytest.mark.parametrize("content,reason", [(b"not audio at all", "not-audio"), (None, "missing")])
def test_read_audio_unusable(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioProblem, match=reason):
        read_audio(path, 16000)
    silent = put(tmp_path / "silent.wav", np.zeros((16000, 2), np.float32), subtype="PCM_16")
    with pytest.raises(AudioProblem, match="silent"):
        read_audio(silent, 16000)


def test_audio_summary_counts_and_notes():
    summary = AudioSummary(24000, (24000, 48000))
    assert summary.add("a", Conversion(1, 48000, 24000)) is None  # the corpus rate: resampled by design
    assert summary.add("b", Conversion(1, 24000, 24000)) is None
    assert summary.add("c", Conversion(1, 8000, 24000)) == "resampled 8000 Hz -> 24000 Hz"
    assert summary.add("d", Conversion(2, 48000, 24000)) == "mixed 2 channels down to mono, resampled 48000 Hz -> 24000 Hz"
    assert summary.to_dict() == {
        "target_rate": 24000, "expected_rates": [24000, 48000],
        "by_sample_rate": {"8000": 1, "24000": 1, "48000": 2}, "by_channels": {"1": 3, "2": 1},
        "resampled_unexpected_rate": 1, "mixed_down": 1,
        "notes": {"c": "resampled 8000 Hz -> 24000 Hz", "d": "mixed 2 channels down to mono, resampled 48000 Hz -> 24000 Hz"},
    }
    assert summary.describe() == ("4 audio files by sample rate (8000 Hz: 1, 24000 Hz: 1, 48000 Hz: 2); "
                                  "1 resampled to 24000 Hz from a rate this pipeline does not expect; 1 mixed down to mono")


# ------------------------------------------------------------------------ featurisation
def test_featurize_audio_once_per_file_skips_and_notes(tmp_path, monkeypatch, caplog):
    pipeline = build_pipeline("zerospeech19")
    put(tmp_path / "ok.wav", voiced(0.5, 16000))
    put(tmp_path / "low.WAV", voiced(0.5, 8000), 8000)
    put(tmp_path / "two.flac", np.stack([voiced(0.5, 16000, 3)] * 2, axis=1), format="FLAC")
    put(tmp_path / "quiet.wav", np.zeros(8000, np.float32), subtype="PCM_16")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt ")
    calls = []
    real = type(pipeline).featurize

    def counting(self, path):
        calls.append(Path(path).name)
        return real(self, path)

    monkeypatch.setattr(type(pipeline), "featurize", counting)
    with caplog.at_level(logging.WARNING):
        audio = featurize_audio(discover_audio(tmp_path), pipeline, progress=False)
    assert sorted(calls) == ["broken.wav", "low.WAV", "ok.wav", "quiet.wav", "two.flac"]  # each file once
    assert sorted(audio.feats) == ["low", "ok", "two"]
    np.testing.assert_array_equal(audio.feats["ok"], pipeline(tmp_path / "ok.wav"))
    expected_low = pipeline.from_waveform(
        librosa.resample(sf.read(tmp_path / "low.WAV", dtype="float32")[0], orig_sr=8000, target_sr=16000, res_type="soxr_hq"))
    np.testing.assert_array_equal(audio.feats["low"], expected_low)
    assert [(Path(s.path).name, s.reason) for s in audio.skipped] == [("broken.wav", "not-audio"), ("quiet.wav", "silent")]
    report = audio.to_dict()
    assert (report["files"], report["usable"], report["by_sample_rate"], report["mixed_down"]) == (5, 3, {"8000": 1, "16000": 2}, 1)
    assert report["notes"] == {"low": "resampled 8000 Hz -> 16000 Hz", "two": "mixed 2 channels down to mono"}
    assert f"{tmp_path / 'low.WAV'}: resampled 8000 Hz -> 16000 Hz" in caplog.text
    assert f"skip {tmp_path / 'quiet.wav'}: silent" in caplog.text


def test_featurize_audio_strict_sample_rate_refuses_before_work(tmp_path, monkeypatch):
    pipeline = build_pipeline("zerospeech19")
    put(tmp_path / "ok.wav", voiced(0.5, 16000))
    put(tmp_path / "low1.wav", voiced(0.5, 8000), 8000)
    put(tmp_path / "low2.wav", voiced(0.5, 8000), 8000)
    put(tmp_path / "high.wav", voiced(0.5, 22050), 22050)
    monkeypatch.setattr(type(pipeline), "featurize", lambda self, path: pytest.fail("featurised before refusing"))
    with pytest.raises(MismatchError, match=r"3 of 4 files are not at 16000 Hz \(8000 Hz: 2, 22050 Hz: 1; e\.g\. .*high\.wav\)"):
        featurize_audio(discover_audio(tmp_path), pipeline, strict_sample_rate=True, progress=False)


def test_featurize_audio_with_nothing_usable_is_an_error(tmp_path):
    put(tmp_path / "a.wav", np.zeros(8000, np.float32), subtype="PCM_16")
    (tmp_path / "b.wav").write_text("text")
    with pytest.raises(AudioInputError, match=r"none of the 2 audio files of .* is usable \(not-audio=1, silent=1"):
        featurize_audio(discover_audio(tmp_path), build_pipeline("zerospeech19"), progress=False, source=str(tmp_path))


def test_featurize_audio_applies_the_standardisation(tmp_path):
    from speechsq.features import Cmvn

    pipeline = build_pipeline("vctk")
    put(tmp_path / "a.wav", voiced(0.5, 48000), 48000)
    cmvn = Cmvn(np.full(80, -40.0, np.float32), np.full(80, 10.0, np.float32), 100)
    audio = featurize_audio(discover_audio(tmp_path), pipeline, cmvn=cmvn, progress=False)
    np.testing.assert_array_equal(audio.feats["a"], (pipeline(tmp_path / "a.wav") + np.float32(40.0)) / np.float32(10.0))
    assert audio.summary.notes == {}  # 48 kHz is the VCTK corpus rate: resampled by design, no note
