"""Log-Mel pipelines against the published recipes, feature directories, standardisation, bad input."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import kaldiio
import librosa
import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from speechsq.completion import keys_digest, mark_complete
from speechsq.data_prep.audio import AudioProblem
from speechsq.data_prep.kaldi_dir import KaldiDataDir
from speechsq.errors import DiskFullError, IncompleteOutputError, MismatchError
from speechsq.features import (
    PIPELINES,
    Cmvn,
    FeatureError,
    FeatureReader,
    NonFiniteFeaturesError,
    build_pipeline,
    load_features,
    load_preprocessing_config,
    require_features,
)
from speechsq.features import compute as compute_module
from speechsq.features.cmvn import RunningMoments
from speechsq.features.compute import compute_features
from speechsq.features.logmel import StftMagnitude
from speechsq.features.store import ArkWriter
from speechsq.features.reference import REFERENCES


def speech_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Harmonic source with a moving pitch, amplitude modulation, noise and a near-silent gap,
    so that the spectra span the whole dB range (including the clipping/floor regions)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 20 * seed + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 25)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    x += 0.01 * rng.standard_normal(len(t))
    gap = slice(len(t) // 3, min(len(t), len(t) // 3 + sr // 5))
    x[gap] = 1e-4 * rng.standard_normal(gap.stop - gap.start)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def write(path: Path, wav: np.ndarray, sr: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, sr, subtype="PCM_16")
    return str(path)


def make_data_dir(tmp_path: Path, sr: int = 16000, n: int = 4, extra: dict | None = None) -> Path:
    wavs = {f"S{k:03d}_000000000{k}": write(tmp_path / f"wav/{k}.wav", speech_like(1.0 + 0.3 * k, sr, k), sr)
            for k in range(n)}
    wavs.update(extra or {})
    d = tmp_path / "data"
    KaldiDataDir(wavs, {u: u[:4] for u in wavs}).write(d)
    return d


# ------------------------------------------------------------------------------ the recipes
@pytest.mark.parametrize("name,sr", [("zerospeech19", 16000), ("vctk", 48000)])
def test_pipeline_matches_reference_recipe(tmp_path, name, sr):
    cfg = load_preprocessing_config(name)
    path = write(tmp_path / "x.wav", speech_like(2.3, sr), sr)
    ours = build_pipeline(cfg)(path)
    ref = REFERENCES[name](path, cfg)
    num_samples = int(np.ceil(len(speech_like(2.3, sr)) * cfg.sample_rate / sr))  # librosa.resample length
    assert ours.shape == ref.shape == (1 + num_samples // cfg.hop_length, cfg.n_mels)
    assert ours.dtype == np.float32 and np.all(np.isfinite(ours))
    if name == "zerospeech19":  # features in [0, 1]: absolute tolerance
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
        assert np.isclose(ref.max() - ref.min(), 1.0, atol=1e-6)  # clipped 80 dB below the max, / 80
    else:  # dB; float32 FFTs: 1e-4 dB = 1.2e-5 relative amplitude
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
        assert ref.min() > -200 and ref.max() < 40


def test_zerospeech_recipe_by_hand(tmp_path):
    """The reference itself, checked step by step against plain numpy on a 16 kHz signal."""
    cfg = load_preprocessing_config("zerospeech19")
    wav = speech_like(1.0, 16000)
    path = write(tmp_path / "x.wav", wav, 16000)
    x, _ = sf.read(path, dtype="float32")
    x = x / np.abs(x).max() * 0.999
    y = np.concatenate([[x[0]], x[1:] - 0.97 * x[:-1]])
    spec = np.abs(librosa.stft(y, n_fft=2048, hop_length=160, win_length=400, window="hann", pad_mode="reflect"))
    mel = librosa.filters.mel(sr=16000, n_fft=2048, n_mels=80, fmin=50, fmax=8000) @ spec
    db = 20 * np.log10(np.maximum(1e-5, mel))
    expected = (np.maximum(db, db.max() - 80) / 80 + 1).T
    np.testing.assert_allclose(build_pipeline(cfg)(path), expected, atol=1e-5)


@pytest.mark.parametrize("n_fft,win,hop", [(2048, 400, 160), (2048, 1200, 300), (512, 511, 128), (64, 64, 16)])
def test_window_support_stft_equals_librosa_stft(n_fft, win, hop):
    x = np.random.default_rng(1).standard_normal(3001)
    ours = StftMagnitude(n_fft, win, hop, "reflect")(x)
    ref = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, pad_mode="reflect")).T
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * ref.max())


def test_configs_load_and_build_by_name():
    assert PIPELINES.names() == ["vctk", "zerospeech19"]
    zs = load_preprocessing_config("zerospeech19")
    assert (zs.n_fft, zs.win_length, zs.hop_length, zs.n_mels, zs.fmin, zs.fmax, zs.top_db) == (
        2048, 400, 160, 80, 50, 8000, 80)
    vc = load_preprocessing_config("vctk", ["n_mels=40"])
    assert (vc.sample_rate, vc.win_length, vc.hop_length, vc.fmin, vc.fmax, vc.floor_db, vc.n_mels) == (
        24000, 1200, 300, 80, 7600, -200, 40)
    assert build_pipeline(OmegaConf.create({"preprocessing": vc}).preprocessing).n_mels == 40
    with pytest.raises(FileNotFoundError, match="known: vctk, zerospeech19"):
        load_preprocessing_config("librispeech")


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["zerospeech19", "vctk"])
def test_silent_input_is_an_error_not_nan(tmp_path, name):
    pipeline = build_pipeline(name)
    path = write(tmp_path / "silent.wav", np.zeros(pipeline.sample_rate, np.float32), pipeline.sample_rate)
    with pytest.raises(AudioProblem, match="silent"):
        pipeline(path)
    with pytest.raises(AudioProblem, match="silent"):
        pipeline.from_waveform(np.zeros(16000, np.float32))


def test_compute_skips_bad_files_with_reasons(tmp_path):
    bad = {
        "S900_0000000001": write(tmp_path / "bad/silent.wav", np.zeros(16000, np.float32), 16000),
        "S901_0000000001": str(tmp_path / "bad/missing.wav"),
        "S902_0000000001": write(tmp_path / "bad/short.wav", speech_like(0.1, 16000), 16000),
    }
    (tmp_path / "bad/text.wav").write_text("RIFF but not really")
    bad["S903_0000000001"] = str(tmp_path / "bad/text.wav")
    d = make_data_dir(tmp_path, n=2, extra=bad)
    report = compute_features(d, tmp_path / "feats", "zerospeech19", min_frames=34, progress=False)
    assert report.written == 2
    reasons = {line.split()[0]: line.split()[1] for line in (tmp_path / "feats/skipped").read_text().splitlines()}
    assert reasons == {"S900_0000000001": "silent", "S901_0000000001": "missing",
                       "S902_0000000001": "too-short", "S903_0000000001": "not-audio"}
    feats = load_features(tmp_path / "feats")
    assert set(feats) == {"S000_0000000000", "S001_0000000001"}
    assert all(np.all(np.isfinite(f)) for f in feats.values())


def test_min_frames_keeps_an_utterance_of_exactly_that_many_frames(tmp_path):
    """1 + len // 160 frames: 5280 samples give 34 frames (kept with min_frames=34), 5279 give 33."""
    wav = speech_like(1.0, 16000)
    d = make_data_dir(tmp_path, n=0, extra={"S001_0000000001": write(tmp_path / "a.wav", wav[:5280], 16000),
                                            "S002_0000000002": write(tmp_path / "b.wav", wav[:5279], 16000)})
    report = compute_features(d, tmp_path / "feats", "zerospeech19", min_frames=34, progress=False)
    assert report.written == 1 and report.frames == 34
    assert report.skipped == [("S002_0000000002", "too-short", "33 frames < 34")]


def test_non_finite_features_are_a_skip_with_a_reason(tmp_path, monkeypatch):
    """Defensive: were a pipeline ever to give NaN for one file, that file is skipped with its
    reason (not the whole run aborted by the archive writer's refusal)."""
    from speechsq.features.logmel import ZeroSpeechLogMel

    real = ZeroSpeechLogMel.from_waveform

    def nan_for_the_short_one(self, wav):
        feats = real(self, wav)
        if len(wav) < 20000:
            feats[3, 5] = np.nan
        return feats

    monkeypatch.setattr(ZeroSpeechLogMel, "from_waveform", nan_for_the_short_one)
    d = make_data_dir(tmp_path, n=2)  # 1.0 s and 1.3 s
    report = compute_features(d, tmp_path / "feats", "zerospeech19", progress=False)
    assert report.written == 1 and report.frames == 1 + 20800 // 160
    assert report.skipped == [("S000_0000000000", "non-finite-features", "NaN or inf in features")]


def test_all_bad_is_an_error(tmp_path):
    silent = {"S900_0000000001": write(tmp_path / "s.wav", np.zeros(16000, np.float32), 16000)}
    d = make_data_dir(tmp_path, n=0, extra=silent)
    with pytest.raises(FeatureError, match=r"no utterance gave features \(1 skipped: silent=1\)"):
        compute_module.main(["--data-dir", str(d), "--out", str(tmp_path / "f"), "--nj", "1"])
    assert sorted(os.listdir(tmp_path / "f")) == []  # nothing written, no temporary file left


# ------------------------------------------------------------------------- feature storage
def test_compute_writes_kaldi_features_identical_for_any_nj(tmp_path):
    d = make_data_dir(tmp_path)
    assert compute_module.main(["--data-dir", str(d), "--out", str(tmp_path / "f1"), "--nj", "1"]) == 0
    compute_features(d, tmp_path / "f2", "zerospeech19", nj=2, progress=False)
    assert (tmp_path / "f1/feats.ark").read_bytes() == (tmp_path / "f2/feats.ark").read_bytes()

    pipeline = build_pipeline("zerospeech19")
    data = KaldiDataDir.read(d)
    feats = load_features(tmp_path / "f1")
    scp = dict(kaldiio.load_scp(str(tmp_path / "f1/feats.scp")))  # standard kaldiio reads it too
    frames = dict(line.split() for line in (tmp_path / "f1/utt2num_frames").read_text().splitlines())
    assert list(feats) == data.utterances
    for utt in data.utterances:
        expected = pipeline(data.wav_path(utt))
        np.testing.assert_array_equal(feats[utt], expected)
        np.testing.assert_array_equal(scp[utt], expected)
        assert int(frames[utt]) == len(expected)
    assert not list((tmp_path / "f1").glob("*.tmp"))


def test_reader_follows_a_moved_directory(tmp_path):
    d = make_data_dir(tmp_path, n=2)
    compute_features(d, tmp_path / "f", "zerospeech19", progress=False)
    before = load_features(tmp_path / "f")
    shutil.move(tmp_path / "f", tmp_path / "moved")
    reader = FeatureReader(tmp_path / "moved")
    assert len(reader) == 2 and reader.num_frames == {u: len(x) for u, x in before.items()}
    for utt, x in before.items():
        np.testing.assert_array_equal(reader[utt], x)


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


def test_interrupted_rerun_keeps_the_old_complete_directory(tmp_path, monkeypatch):
    d = make_data_dir(tmp_path, n=3)
    compute_features(d, tmp_path / "f", "zerospeech19", progress=False)
    before = tree(tmp_path / "f")
    assert sorted(before) == ["audio_report.json", "complete.json", "feats.ark", "feats.scp", "preprocessing.yaml",
                              "skipped", "utt2num_frames"]
    calls = {"n": 0}
    real = compute_module._extract

    def interrupted(item):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(item)

    monkeypatch.setattr(compute_module, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compute_features(d, tmp_path / "f", "zerospeech19", progress=False)
    assert tree(tmp_path / "f") == before  # untouched: no temporary file, the old features still usable
    assert sorted(require_features(tmp_path / "f", d)) == KaldiDataDir.read(d).utterances


def no_space_after(n_calls: int, monkeypatch) -> None:
    """kaldiio.save_ark writes a little, then fails with ENOSPC from call ``n_calls`` on."""
    real = kaldiio.save_ark
    calls = {"n": 0}

    def save_ark(f, mats, *args, **kw):
        calls["n"] += 1
        if calls["n"] >= n_calls:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, mats, *args, **kw)

    monkeypatch.setattr(kaldiio, "save_ark", save_ark)


def test_disk_full_keeps_the_old_directory_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    d = make_data_dir(tmp_path, n=3)
    compute_features(d, tmp_path / "f", "zerospeech19", progress=False)
    before = tree(tmp_path / "f")
    old = load_features(tmp_path / "f")
    no_space_after(2, monkeypatch)
    with pytest.raises(DiskFullError, match=r"^No space left on device: .*/f/feats\.ark\.tmp$"):
        compute_features(d, tmp_path / "f", "zerospeech19", progress=False)
    assert tree(tmp_path / "f") == before
    for utt, x in require_features(tmp_path / "f").items():
        np.testing.assert_array_equal(x, old[utt])
    # into a new directory: nothing that looks like features, no feats.ark.tmp filling the disk
    with pytest.raises(DiskFullError):
        compute_features(d, tmp_path / "g", "zerospeech19", progress=False)
    assert os.listdir(tmp_path / "g") == []


def test_disk_full_in_the_standardisation_pass(tmp_path, monkeypatch):
    d = make_data_dir(tmp_path, sr=48000, n=2)
    no_space_after(2, monkeypatch)  # the first raw matrix is written, the second is not
    with pytest.raises(DiskFullError, match=r"^No space left on device: .*/f/raw\.ark\.tmp$"):
        compute_features(d, tmp_path / "f", "vctk", progress=False)
    assert os.listdir(tmp_path / "f") == []


def test_disk_full_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    from speechsq import cli

    d = make_data_dir(tmp_path, n=2)
    no_space_after(1, monkeypatch)
    assert cli.main(["compute-feats", "--data-dir", str(d), "--out", str(tmp_path / "f"), "--nj", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].split("\r")[-1] == f"speechsq compute-feats: error: No space left on device: {tmp_path / 'f' / 'feats.ark.tmp'}"


def test_completion_marker_and_require_features(tmp_path):
    bad = {"S900_0000000001": write(tmp_path / "bad/silent.wav", np.zeros(16000, np.float32), 16000)}
    d = make_data_dir(tmp_path, n=2, extra=bad)
    compute_features(d, tmp_path / "f", "zerospeech19", progress=False)
    marker = json.loads((tmp_path / "f/complete.json").read_text())
    assert {k: marker[k] for k in ("kind", "count", "producer", "data_dir", "data_dir_utterances", "skipped",
                                   "preprocessing", "cmvn_from", "sample_rates")} == {
        "kind": "features", "count": 2, "producer": "speechsq compute-feats", "data_dir": str(d.resolve()),
        "data_dir_utterances": 3, "skipped": 1, "preprocessing": "zerospeech19", "cmvn_from": None,
        "sample_rates": {"16000": 2}}  # of the files that could be read
    assert marker["keys_sha256"] == keys_digest(["S000_0000000000", "S001_0000000001"])
    reader = require_features(tmp_path / "f", d)  # the silent utterance is listed in skipped: fine
    assert sorted(reader) == ["S000_0000000000", "S001_0000000001"]
    assert reader.skipped() == {"S900_0000000001": "silent RMS 0.00 LSB, peak 0 LSB of 16-bit audio (silence: RMS <= 8 "
                                                   "LSB, -72.2 dBFS); peak normalisation would turn it into loud noise"}


def test_require_features_refuses_incomplete_and_mismatched(tmp_path):
    d = make_data_dir(tmp_path / "a", n=3)
    other = make_data_dir(tmp_path / "b", n=2)
    with pytest.raises(IncompleteOutputError, match=r"f does not exist; run `speechsq compute-feats` again"):
        require_features(tmp_path / "f")
    compute_features(d, tmp_path / "f", "zerospeech19", progress=False)
    # another data dir with the same first utterances: the features have extra ones
    with pytest.raises(MismatchError, match=rf"features {tmp_path / 'f'} \(computed from {d.resolve()}\): 1 of their 3 "
                                            rf"utterances are not in {other} \(e.g. S002_0000000002\)"):
        require_features(tmp_path / "f", other)
    disjoint = tmp_path / "c"
    KaldiDataDir({"X001_1": "/x.wav"}, {"X001_1": "X001"}).write(disjoint)
    with pytest.raises(MismatchError, match=r"have no utterance in common with .*c \(3 vs 1 utterances\)"):
        require_features(tmp_path / "f", disjoint)
    bigger = tmp_path / "d"
    data = KaldiDataDir.read(d)
    KaldiDataDir({**data.wav_scp, "S009_9": "/x.wav"}, {**data.utt2spk, "S009_9": "S009"}).write(bigger)
    with pytest.raises(MismatchError, match=r"1 of the 4 utterances of .*d have no features and are not listed as "
                                            r"skipped \(e.g. S009_9\)"):
        require_features(tmp_path / "f", bigger)
    scp = tmp_path / "f/feats.scp"
    scp.write_text("".join(scp.read_text().splitlines(keepends=True)[:2]))  # edited after the fact
    with pytest.raises(IncompleteOutputError, match="lists 2 utterances but .*complete.json says 3"):
        require_features(tmp_path / "f")
    (tmp_path / "f/complete.json").unlink()
    with pytest.raises(IncompleteOutputError, match="incomplete \\(no complete.json"):
        require_features(tmp_path / "f")


def test_nan_in_stored_features_names_the_utterance(tmp_path):
    out = tmp_path / "f"
    out.mkdir()
    bad = np.zeros((5, 3), np.float32)
    bad[3, 1] = np.nan
    bad[4, 0] = np.inf
    with open(out / "feats.ark", "wb") as f:
        kaldiio.save_ark(f, {"u1": np.ones((4, 3), np.float32), "u2": bad}, scp=str(out / "feats.scp"))
    mark_complete(out, "features", ["u1", "u2"], producer="test")
    reader = require_features(out)
    np.testing.assert_array_equal(reader["u1"], np.ones((4, 3), np.float32))
    with pytest.raises(NonFiniteFeaturesError, match=r"utterance 'u2' in .*feats.ark has 2 NaN/Inf values "
                                                     r"\(first at frame 3\); recompute"):
        reader["u2"]
    with pytest.raises(NonFiniteFeaturesError, match="u3: refusing to store features with NaN/Inf"):
        ArkWriter(tmp_path / "g").write("u3", bad)


def test_other_sample_rates_are_resampled_with_a_note_or_refused(tmp_path, caplog):
    low = write(tmp_path / "wav/low.wav", speech_like(1.0, 8000, 5), 8000)
    stereo = tmp_path / "wav/stereo.wav"
    sf.write(stereo, np.stack([speech_like(1.0, 16000, 6)] * 2, axis=1), 16000, subtype="PCM_16")
    d = make_data_dir(tmp_path, n=2, extra={"S008_0000000008": low, "S009_0000000009": str(stereo)})
    with caplog.at_level(logging.WARNING):
        report = compute_features(d, tmp_path / "f", "zerospeech19", progress=False)
    assert f"S008_0000000008 ({low}): resampled 8000 Hz -> 16000 Hz" in caplog.text
    assert f"S009_0000000009 ({stereo}): mixed 2 channels down to mono" in caplog.text
    assert caplog.text.count("compute.py") == 2  # no note for the files already at 16 kHz mono
    audio = json.loads((tmp_path / "f/audio_report.json").read_text())
    assert (audio["by_sample_rate"], audio["by_channels"], audio["resampled_unexpected_rate"], audio["mixed_down"]) == (
        {"8000": 1, "16000": 3}, {"1": 3, "2": 1}, 1, 1)
    assert report.audio.describe() == ("4 audio files by sample rate (8000 Hz: 1, 16000 Hz: 3); 1 resampled to 16000 Hz "
                                       "from a rate this pipeline does not expect; 1 mixed down to mono")
    pipeline = build_pipeline("zerospeech19")
    resampled = librosa.resample(sf.read(low, dtype="float32")[0], orig_sr=8000, target_sr=16000, res_type="soxr_hq")
    np.testing.assert_array_equal(load_features(tmp_path / "f")["S008_0000000008"], pipeline.from_waveform(resampled))

    before = tree(tmp_path / "f")
    with pytest.raises(MismatchError, match=r"data/wav.scp: 1 of 4 files are not at 16000 Hz \(8000 Hz: 1; e\.g\. .*low\.wav\)"):
        compute_module.main(["--data-dir", str(d), "--out", str(tmp_path / "f"), "--nj", "1", "--strict-sample-rate"])
    assert tree(tmp_path / "f") == before


def test_recomputing_with_cmvn_from_drops_the_old_statistics(tmp_path):
    train = make_data_dir(tmp_path / "train", sr=48000, n=2)
    compute_features(train, tmp_path / "f/train", "vctk", progress=False)
    compute_features(train, tmp_path / "f/test", "vctk", progress=False)  # by mistake: own statistics
    assert FeatureReader(tmp_path / "f/test").cmvn() is not None
    compute_features(train, tmp_path / "f/test", "vctk", cmvn_from=tmp_path / "f/train/cmvn.npz", progress=False)
    assert FeatureReader(tmp_path / "f/test").cmvn() is None  # no stale cmvn.npz next to the new features
    assert json.loads((tmp_path / "f/test/complete.json").read_text())["cmvn_from"] == str(tmp_path / "f/train/cmvn.npz")


def test_corpus_rate_of_a_pipeline_needs_no_note(tmp_path, caplog):
    d = make_data_dir(tmp_path, sr=48000, n=2)
    with caplog.at_level(logging.WARNING):
        report = compute_features(d, tmp_path / "f", "vctk", progress=False, strict_sample_rate=True)
    assert report.audio.notes == {} and "resampled" not in caplog.text
    assert build_pipeline("vctk").expected_rates == {24000, 48000}
    assert build_pipeline("zerospeech19").expected_rates == {16000}


# --------------------------------------------------------------------------- standardisation
def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(-40, 15, size=(n, 5)) for n in (1, 7, 300, 2)]
    moments = RunningMoments(5)
    for c in chunks:
        moments.update(c)
    everything = np.concatenate(chunks)
    cmvn = moments.finalize()
    np.testing.assert_allclose(cmvn.mean, everything.mean(0), rtol=1e-6)
    np.testing.assert_allclose(cmvn.std, everything.std(0), rtol=1e-6)  # population std (StandardScaler)
    assert cmvn.count == len(everything)
    x = everything[:10].astype(np.float32)
    np.testing.assert_allclose(cmvn.inverse(cmvn.apply(x)), x, atol=1e-4)


def test_a_constant_dimension_is_centred_with_a_unit_scale():
    """StandardScaler semantics: a dimension with zero variance gets std 1 (centred, not blown up)."""
    frames = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0], [7.0, 5.0]])
    moments = RunningMoments(2)
    moments.update(frames[:1])
    moments.update(frames[1:])
    cmvn = moments.finalize()
    assert cmvn.mean.tolist() == [4.0, 5.0] and cmvn.std.tolist() == [np.float32(np.sqrt(5.0)), 1.0]
    assert cmvn.apply(np.array([[4.0, 5.0], [4.0, 6.0]], np.float32)).tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_vctk_standardisation_uses_training_statistics(tmp_path):
    train = make_data_dir(tmp_path / "train", sr=48000, n=3)
    test = make_data_dir(tmp_path / "test", sr=48000, n=2)
    compute_features(train, tmp_path / "f/train", "vctk", progress=False)
    cmvn = Cmvn.load(tmp_path / "f/train/cmvn.npz")
    assert compute_module.main(["--data-dir", str(test), "--out", str(tmp_path / "f/test"), "--preprocessing",
                                "vctk", "--nj", "1", "--cmvn-from", str(tmp_path / "f/train/cmvn.npz")]) == 0
    assert not (tmp_path / "f/test/cmvn.npz").exists()

    pipeline = build_pipeline("vctk")
    raw_train = {u: pipeline(p) for u, p in KaldiDataDir.read(train).wav_scp.items()}
    stacked = np.concatenate(list(raw_train.values()))
    np.testing.assert_allclose(cmvn.mean, stacked.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cmvn.std, stacked.std(0), rtol=1e-5)
    train_feats = load_features(tmp_path / "f/train")
    all_train = np.concatenate(list(train_feats.values()))
    np.testing.assert_allclose(all_train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(all_train.std(0), 1, atol=1e-4)
    for utt, x in load_features(tmp_path / "f/test").items():
        raw = pipeline(KaldiDataDir.read(test).wav_path(utt))
        np.testing.assert_allclose(x, (raw - cmvn.mean) / cmvn.std, atol=1e-5)
        np.testing.assert_allclose(cmvn.inverse(x), raw, atol=1e-3)  # dB, for MSE in dB^2
    stored = FeatureReader(tmp_path / "f/train").cmvn()
    np.testing.assert_array_equal(stored.mean, cmvn.mean)
    np.testing.assert_array_equal(stored.std, cmvn.std)
    assert stored.count == sum(len(x) for x in raw_train.values())
