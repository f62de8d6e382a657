"""speechsq resynthesize: voices, the ZeroSpeech 2019 synthesis names, inputs (data dir, audio
files of any format, extracted units), skipped files, completion marker, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from tiny_speech import speech_like, tiny_checkpoint

from speechsq import cli
from speechsq.completion import require_complete
from speechsq.data_prep.audio import AudioInputError
from speechsq.errors import SpeechsqError
from speechsq.eval import resynthesize as rs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A data dir of three test utterances (ZeroSpeech names) and one unreadable file."""
    root = tmp_path_factory.mktemp("corpus")
    wavs = root / "wavs"
    wavs.mkdir()
    lengths = {"S101_0000000001": 0.5, "S101_0000000002": 0.7, "V002_0000000003": 0.6}
    for k, (utt, seconds) in enumerate(lengths.items()):
        sf.write(wavs / f"{utt}.wav", speech_like(seconds, seed=20 + k), 16000)
    (wavs / "S102_0000000004.wav").write_bytes(b"not audio at all")
    data = root / "data"
    data.mkdir()
    utts = sorted([*lengths, "S102_0000000004"])
    (data / "wav.scp").write_text("".join(f"{u} {wavs / u}.wav\n" for u in utts))
    (data / "utt2spk").write_text("".join(f"{u} {u[:4]}\n" for u in utts))
    return {"data": data, "wavs": wavs, "lengths": lengths}


def test_zerospeech_names_and_peak_limit():
    assert rs.zerospeech_name("V001", "S002_0379088085") == "V001_0379088085"
    assert rs.zerospeech_name("V002", "plain") == "V002_plain"
    limited, changed = rs.limit_peak(np.array([0.5, -2.0, 1.0]))
    np.testing.assert_allclose(limited, [0.24975, -0.999, 0.4995])
    assert changed is True
    same, changed = rs.limit_peak(np.array([0.5, -0.999]))
    assert same.tolist() == [0.5, -0.999] and changed is False


def test_conversion_from_a_data_dir_writes_voices_and_the_zerospeech_tree(tmp_path, corpus):
    out = tmp_path / "synthesis"
    assert rs.main(["--checkpoint", str(tiny_checkpoint()), "--data-dir", str(corpus["data"]), "--speaker", "V001", "V002",
                    "--source-voice", "--zerospeech", "--out", str(out), "--no-progress", "--device", "cpu",
                    "--griffin-lim-iters", "4"]) == 0
    marker = require_complete(out, "synthesis")
    ok = sorted(corpus["lengths"])
    # V002_0000000003's speaker is a training voice: it also gets its own voice back;
    # S101 is not a training speaker of the model: its source-voice resynthesis is skipped
    keys = [f"{v}/{u}" for u in ok for v in ("V001", "V002")] + ["source/V002_0000000003"]
    assert marker.count == len(keys) and marker.matches(keys)
    for utt, seconds in corpus["lengths"].items():
        frames = 1 + int(seconds * 16000) // 160
        for voice in ("V001", "V002"):
            wav, rate = sf.read(out / voice / f"{utt}.wav")
            assert rate == 16000 and len(wav) == 160 * (frames - 1)
            twin = out / "zerospeech" / "test" / f"{rs.zerospeech_name(voice, utt)}.wav"
            assert twin.read_bytes() == (out / voice / f"{utt}.wav").read_bytes()
    assert sorted(p.name for p in (out / "zerospeech" / "test").iterdir()) == sorted(
        f"{v}_{u.split('_')[1]}.wav" for u in ok for v in ("V001", "V002"))
    skipped = (out / "skipped").read_text().splitlines()
    assert [line.split()[:2] for line in skipped] == [
        ["S101_0000000001", "unknown-source-speaker"], ["S101_0000000002", "unknown-source-speaker"],
        ["S102_0000000004", "not-audio"]]
    manifest = [line.split("\t") for line in (out / rs.MANIFEST).read_text().splitlines()]
    assert manifest[0] == ["V001", "S101_0000000001", "V001/S101_0000000001.wav",
                           str(corpus["wavs"] / "S101_0000000001.wav"), "S101"]
    info = json.loads((out / "resynthesize.json").read_text())
    assert (info["n_inputs"], info["n_utterances"], info["n_written"], info["n_skipped"]) == (4, 3, 7, 3)
    assert info["voices"] == ["V001", "V002", "source"] and info["input_kind"] == "data_dir"


def test_limit_takes_each_speaker_in_turn():
    sources = [rs.Source(u, u[:4]) for u in
               ["S101_1", "S101_2", "S101_3", "S101_4", "S102_1", "S102_2", "S103_1", "S104_1", "S104_2"]]
    # round 1: S101_1 S102_1 S103_1 S104_1, round 2: S101_2 ...; returned in input order
    assert [s.utt for s in rs.select(sources, None, 5)] == ["S101_1", "S101_2", "S102_1", "S103_1", "S104_1"]
    assert [s.utt for s in rs.select(sources, None, 7)] == ["S101_1", "S101_2", "S102_1", "S102_2", "S103_1",
                                                            "S104_1", "S104_2"]
    assert [s.utt for s in rs.select(sources, None, 2)] == ["S101_1", "S102_1"]
    assert rs.select(sources, None, 50) == sources
    unknown = [rs.Source(f"u{k}") for k in range(4)]  # no speakers: one group, the first N
    assert [s.utt for s in rs.select(unknown, None, 3)] == ["u0", "u1", "u2"]
    with pytest.raises(SpeechsqError, match="--limit must be >= 1"):
        rs.select(sources, None, 0)


def test_a_new_run_replaces_the_old_output_and_refuses_other_folders(tmp_path, corpus):
    out = tmp_path / "out"
    args = ["--checkpoint", str(tiny_checkpoint()), "--data-dir", str(corpus["data"]), "--out", str(out),
            "--no-progress", "--device", "cpu", "--griffin-lim-iters", "2"]
    assert rs.main([*args, "--speaker", "V001", "V002", "--zerospeech"]) == 0
    assert rs.main([*args, "--speaker", "V002", "--limit", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["V002", "complete.json", "resynthesize.json", "skipped", rs.MANIFEST]
    assert [p.name for p in (out / "V002").iterdir()] == ["S101_0000000001.wav"]  # nothing stale is left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(SpeechsqError, match="does not look like a synthesis directory"):
        rs.main([*args[:4], "--out", str(other), "--speaker", "V001"])
    assert (other / "thesis.tex").read_text() == "precious"


def test_audio_folder_any_format_and_case(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "a.WAV", speech_like(0.4, seed=1), 16000)
    sf.write(folder / "sub" / "b.flac", np.stack([speech_like(0.4, 22050, seed=2)] * 2, axis=1), 22050)
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    assert rs.main(["--checkpoint", str(tiny_checkpoint()), "--wav", str(folder), "--speaker", "V002", "--out", str(out),
                    "--no-progress", "--device", "cpu", "--griffin-lim-iters", "2"]) == 0
    assert sorted(p.name for p in (out / "V002").iterdir()) == ["a.wav", "b.wav"]
    assert len(sf.read(out / "V002" / "b.wav")[0]) == 160 * (1 + 6400 // 160 - 1)  # resampled to 16 kHz
    sf.write(folder / "sub" / "a.wav", speech_like(0.2), 16000)
    with pytest.raises(AudioInputError, match=r"a\.WAV and .*sub/a\.wav would both be utterance 'a'"):
        rs.main(["--checkpoint", str(tiny_checkpoint()), "--wav", str(folder), "--speaker", "V002", "--out", str(out)])
    one = tmp_path / "one"
    assert rs.main(["--checkpoint", str(tiny_checkpoint()), "--wav", str(folder / "a.WAV"), "--speaker", "V001",
                    "--out", str(one), "--no-progress", "--device", "cpu", "--griffin-lim-iters", "2"]) == 0
    assert [p.name for p in (one / "V001").iterdir()] == ["a.wav"]


def test_units_from_extract_decode_to_speech(tmp_path, corpus):
    from speechsq.eval.extract import main as extract_main
    from speechsq.features import build_pipeline
    from speechsq.features.store import ArkWriter

    pipeline = build_pipeline({**build_pipeline("zerospeech19").cfg, "n_mels": 20})
    writer = ArkWriter(tmp_path / "feats")
    for utt in corpus["lengths"]:
        writer.write(utt, pipeline(corpus["wavs"] / f"{utt}.wav"))
    writer.commit()
    units = tmp_path / "units"
    assert extract_main(["--checkpoint", str(tiny_checkpoint()), "--data-dir", str(corpus["data"]), "--feats",
                         str(tmp_path / "feats"), "--out", str(units), "--no-progress", "--device", "cpu",
                         "--allow-missing"]) == 0  # the unreadable file has no features
    out = tmp_path / "out"
    assert rs.main(["--checkpoint", str(tiny_checkpoint()), "--units", str(units), "--speaker", "V001", "--out", str(out),
                    "--utts", "S101_0000000002", "--no-progress", "--device", "cpu", "--griffin-lim-iters", "2"]) == 0
    latent = len(np.load(units / "indices" / "S101_0000000002.npy"))
    wav, _ = sf.read(out / "V001" / "S101_0000000002.wav")
    assert len(wav) == 160 * (2 * latent - 1)  # units alone: two feature frames per unit frame
    assert [p.name for p in (out / "V001").iterdir()] == ["S101_0000000002.wav"]
    # units added after extraction are not the ones the marker vouches for: refused, as evaluate does
    np.save(units / "indices" / "S999_0000000009.npy", np.zeros(3, np.int64))
    with pytest.raises(rs.ResynthesisError, match=r"indices holds \d+ utterances but its complete.json says \d+"):
        rs.main(["--checkpoint", str(tiny_checkpoint()), "--units", str(units), "--speaker", "V001", "--out",
                 str(tmp_path / "out2"), "--no-progress", "--device", "cpu", "--griffin-lim-iters", "2"])


def test_one_line_errors(tmp_path, corpus, capsys):
    base = ["resynthesize", "--checkpoint", str(tiny_checkpoint()), "--out", str(tmp_path / "o"), "--no-progress",
            "--device", "cpu"]
    assert cli.main([*base, "--data-dir", str(corpus["data"]), "--speaker", "V003"]) == 2
    assert capsys.readouterr().err.strip() == (
        "speechsq resynthesize: error: unknown speaker 'V003'; the model knows: V001, V002")
    assert cli.main([*base, "--wav", str(corpus["wavs"]), "--source-voice"]) == 2
    assert "--source-voice needs each utterance's speaker" in capsys.readouterr().err
    assert cli.main([*base, "--data-dir", str(corpus["data"])]) == 2
    assert "nothing to synthesise" in capsys.readouterr().err
    assert cli.main([*base, "--wav", str(tmp_path / "missing"), "--speaker", "V001"]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    assert cli.main([*base, "--data-dir", str(corpus["data"]), "--speaker", "V001", "--utts", "nope"]) == 2
    assert "utterance(s) ['nope'] are not in the input" in capsys.readouterr().err
    assert cli.main([*base, "--units", str(tmp_path), "--speaker", "V001"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"speechsq resynthesize: error: {tmp_path} is incomplete (no complete.json: the command that writes it failed "
        "or is still running); run `speechsq extract` again")
    from speechsq.completion import mark_complete

    mark_complete(tmp_path / "empty", "units", [], producer="test")
    assert cli.main([*base, "--units", str(tmp_path / "empty"), "--speaker", "V001"]) == 2
    assert "no indices/*.npy under" in capsys.readouterr().err
    mark_complete(tmp_path / "feats", "features", [], producer="test")
    assert cli.main([*base, "--units", str(tmp_path / "feats"), "--speaker", "V001"]) == 2
    assert "holds 'features' output, expected 'units'" in capsys.readouterr().err
