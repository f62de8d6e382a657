"""Synthesis measures: MCD / LSD closed forms, the speaker classifier, per-voice conversion
scores and the JSON of `speechsq synthesis-measures`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from tiny_speech import speech_like, tiny_checkpoint

from speechsq.completion import require_complete
from speechsq.eval import speech_measures as sm
from speechsq.features import build_pipeline

TEN_OVER_LN10 = 10.0 / np.log(10.0)


def test_identical_signals_are_at_distance_zero_exactly():
    pipeline = build_pipeline("zerospeech19")
    wav = speech_like(0.5, seed=1)
    distance = sm.compare_waveforms(wav, wav.copy(), pipeline)
    assert distance.mcd_db == 0.0 and distance.lsd_db == 0.0 and distance.frames == 1 + 8000 // 160


def test_silence_sits_at_the_mel_floor_of_minus_100_dB():
    pipeline = build_pipeline("zerospeech19")
    assert np.all(sm.log_mel(np.zeros(1600), pipeline) == np.log(1e-5))


def test_a_gain_gives_its_dB_as_lsd_and_leaves_the_cepstrum():
    pipeline = build_pipeline("zerospeech19")
    wav = speech_like(0.5, seed=2) + 0.05  # no band near the floor, so the gain is seen everywhere
    distance = sm.compare_waveforms(wav, 0.5 * wav, pipeline)
    assert distance.lsd_db == pytest.approx(20 * np.log10(2.0), abs=1e-9)
    assert distance.mcd_db == pytest.approx(0.0, abs=1e-9)  # c_0 (the level) is not counted


def test_mel_cepstrum_and_mcd_closed_forms():
    bands = 80
    m = np.arange(bands)
    base = 0.7 + 2 * 0.3 * np.cos(np.pi * (m + 0.5) / bands)
    cepstrum = sm.mel_cepstrum(base[None], 24)[0]
    np.testing.assert_allclose(cepstrum, [0.3] + [0.0] * 23, atol=1e-15)
    shifted = base + 2 * 0.1 * np.cos(np.pi * 3 * (m + 0.5) / bands)  # c_3 changes by 0.1
    assert sm.mel_cepstral_distortion(base[None], shifted[None]) == pytest.approx(TEN_OVER_LN10 * np.sqrt(2) * 0.1, rel=1e-12)
    high = base + 2 * 0.1 * np.cos(np.pi * 30 * (m + 0.5) / bands)  # beyond c_24: not counted
    assert sm.mel_cepstral_distortion(base[None], high[None]) == pytest.approx(0.0, abs=1e-12)
    # two frames: the distortion is their mean
    both = sm.mel_cepstral_distortion(np.stack([base, base]), np.stack([shifted, base]))
    assert both == pytest.approx(TEN_OVER_LN10 * np.sqrt(2) * 0.1 / 2, rel=1e-12)


def test_lsd_closed_form_and_frame_alignment():
    a = np.zeros((3, 4))
    b = np.zeros((4, 4))
    b[:, :2] = np.log(10.0)  # +20 dB in half the bands
    assert sm.log_spectral_distance(a, b) == pytest.approx(np.sqrt(0.5 * 20.0**2), rel=1e-12)  # common 3 frames
    # per frame first, then the mean over frames: 0 dB and 20 dB frames give 10 dB (not sqrt(200))
    assert sm.log_spectral_distance(np.zeros((2, 4)), np.array([[0.0] * 4, [np.log(10.0)] * 4])) == pytest.approx(10.0, rel=1e-12)
    with pytest.raises(sm.MeasureError, match="same bands"):
        sm.log_spectral_distance(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(sm.MeasureError, match="no frames"):
        sm.log_spectral_distance(np.zeros((0, 4)), np.zeros((3, 4)))


def test_speaker_classifier_on_separable_speakers():
    rng = np.random.default_rng(0)
    feats, utt2spk = {}, {}
    for s, centre in enumerate((-2.0, 0.0, 2.0)):
        for k in range(10):
            utt = f"spk{s}_{k}"
            feats[utt] = rng.normal(centre, 0.3, size=(20, 5))
            utt2spk[utt] = f"spk{s}"
    classifier = sm.train_speaker_classifier(feats, utt2spk, max_utterances_per_speaker=10, seed=0)
    assert classifier.speakers == ["spk0", "spk1", "spk2"]
    assert classifier.heldout_accuracy == 100.0 and classifier.n_heldout_utterances == 6  # 20% of 10 per speaker
    assert classifier.assign(rng.normal(2.0, 0.3, size=(15, 5))) == "spk2"
    with pytest.raises(sm.MeasureError, match="at least two speakers"):
        sm.train_speaker_classifier({"a": feats["spk0_0"]}, {"a": "spk0"})


class FixedClassifier:
    """Assigns utterances to speakers from a list, in order."""

    speakers = ["V001", "V002", "S001"]

    def __init__(self, answers):
        self.answers = list(answers)

    def assign(self, frames):
        return self.answers.pop(0)

    def to_dict(self):
        return {"speakers": self.speakers}


@pytest.fixture(scope="module")
def synthesis(tmp_path_factory):
    """A resynthesize output: 2 utterances in V001 and V002, one in its own voice."""
    from speechsq.eval.resynthesize import main

    root = tmp_path_factory.mktemp("syn")
    (root / "wavs").mkdir()
    (root / "data").mkdir()
    utts = ["V001_0000000001", "V001_0000000002"]
    for k, utt in enumerate(utts):
        sf.write(root / "wavs" / f"{utt}.wav", speech_like(0.5, seed=30 + k), 16000)
    (root / "data" / "wav.scp").write_text("".join(f"{u} {root / 'wavs' / u}.wav\n" for u in utts))
    (root / "data" / "utt2spk").write_text("".join(f"{u} V001\n" for u in utts))
    assert main(["--checkpoint", str(tiny_checkpoint()), "--data-dir", str(root / "data"), "--speaker", "V001", "V002",
                 "--source-voice", "--out", str(root / "out"), "--no-progress", "--device", "cpu",
                 "--griffin-lim-iters", "4"]) == 0
    return root


def test_conversion_share_per_voice(synthesis):
    import speechsq

    codec = speechsq.load(tiny_checkpoint())
    entries = sm.read_synthesis_dir(synthesis / "out")
    assert sorted({e.voice for e in entries}) == ["V001", "V002", "source"]
    # entries in manifest order: per utterance, V001 then V002; voices are scored one after the other
    result = sm.measure_conversion(entries, codec, FixedClassifier(["V001", "S001", "V001", "V002"]))
    assert result["V001"] == {"n_utterances": 2, "speaker_match": 50.0, "assigned": {"S001": 1, "V001": 1}}
    assert result["V002"] == {"n_utterances": 2, "speaker_match": 50.0, "assigned": {"V001": 1, "V002": 1}}
    summary = sm.summarize(None, {"V001": {"speaker_match": 50.0}, "V002": {"speaker_match": 100.0, "abx_within": 20.0}}, None)
    assert summary["conversion_speaker_match"] == 75.0 and summary["conversion_abx_within"] == 20.0
    assert summary["conversion_abx_across"] is None and summary["resynthesis_mcd_db"] is None


def test_conversion_abx_scores_the_re_encoded_speech(synthesis, monkeypatch):
    import speechsq
    from speechsq.eval import abx

    codec = speechsq.load(tiny_checkpoint())
    calls = []

    def fake_abx(items, features, frame_shift, distance, context_modes, allow_missing):
        assert allow_missing  # only the synthesised utterances of the item file are scored
        calls.append((items, dict(features), frame_shift, distance, context_modes))
        return SimpleNamespace(scores={"within-within": 10.0 + len(calls), "across-within": 30.0})

    monkeypatch.setattr(abx, "compute_abx", fake_abx)
    entries = sm.read_synthesis_dir(synthesis / "out")
    result = sm.measure_conversion(entries, codec, items="items.txt", abx_distance="euclidean")
    # calls: V001 converted (11), the originals of the same utterances, once (12), V002 converted (13)
    assert len(calls) == 3
    assert result["V001"]["abx_within"] == 11.0 and result["V002"]["abx_within"] == 13.0
    assert result["V001"]["abx_within_original"] == result["V002"]["abx_within_original"] == 12.0
    assert result["V002"]["abx_across"] == 30.0 and "speaker_match" not in result["V001"]
    items, features, frame_shift, distance, modes = calls[2]
    assert (items, frame_shift, distance, modes) == ("items.txt", 0.02, "euclidean", ("within",))
    wav = sf.read(synthesis / "out" / "V002" / "V001_0000000001.wav")[0]
    expected = codec.encode(wav, 16000).quantized.numpy()
    assert sorted(features) == ["V001_0000000001", "V001_0000000002"]
    np.testing.assert_array_equal(features["V001_0000000001"], expected)
    original = calls[1][1]  # the source wavs, re-encoded by the same model
    source = sf.read(synthesis / "wavs" / "V001_0000000002.wav")[0]
    np.testing.assert_array_equal(original["V001_0000000002"], codec.encode(source, 16000).quantized.numpy())
    assert sorted(original) == ["V001_0000000001", "V001_0000000002"]
    summary = sm.summarize(None, result, None)
    assert (summary["conversion_abx_within"], summary["conversion_abx_within_original"]) == (12.0, 12.0)
    assert summary["conversion_abx_across_original"] == 30.0


def test_conversion_abx_needs_the_source_audio(synthesis, monkeypatch):
    import dataclasses

    import speechsq
    from speechsq.eval import abx

    monkeypatch.setattr(abx, "compute_abx", lambda *a, **k: pytest.fail("scored before the inputs were checked"))
    entries = sm.read_synthesis_dir(synthesis / "out")
    entries[1] = dataclasses.replace(entries[1], source_audio=None)  # as converted from units
    with pytest.raises(sm.MeasureError, match=rf"1 converted utterance\(s\) have no source audio to compare with "
                                              rf"\(e\.g\. {entries[1].utt}: converted from units\?\); run without --items"):
        sm.measure_conversion(entries, speechsq.load(tiny_checkpoint()), items="items.txt")


def test_resynthesis_against_the_source(synthesis):
    import speechsq

    codec = speechsq.load(tiny_checkpoint())
    measures = sm.measure_resynthesis(sm.read_synthesis_dir(synthesis / "out"), codec)
    assert measures.n_utterances == 2 and sorted(measures.per_utterance) == ["V001_0000000001", "V001_0000000002"]
    assert measures.mcd_coefficients == 19  # c_1..c_19 of the tiny model's 20 bands
    pipeline = codec.pipeline
    source = sf.read(synthesis / "wavs" / "V001_0000000001.wav")[0]
    out = sf.read(synthesis / "out" / "source" / "V001_0000000001.wav")[0]
    expected = sm.compare_waveforms(source / np.abs(source).max() * 0.999, out, pipeline)  # peak-normalised original
    assert measures.per_utterance["V001_0000000001"]["mcd_db"] == pytest.approx(expected.mcd_db, rel=1e-12)
    assert measures.mcd_db == pytest.approx(np.mean([v["mcd_db"] for v in measures.per_utterance.values()]), rel=1e-12)


def test_resynthesis_measures_are_means_over_utterances(synthesis, monkeypatch):
    import dataclasses

    import speechsq

    entries = sm.read_synthesis_dir(synthesis / "out")  # converted voices too: only "source" is compared
    entries.append(dataclasses.replace(next(e for e in entries if e.voice == "source"), utt="copy"))
    values = iter([(1.0, 4.0), (2.0, 5.0), (6.0, 9.0)])  # per source utterance (MCD, LSD), in entry order
    monkeypatch.setattr(sm, "compare_waveforms", lambda *args: sm.SpectralDistance(*next(values), frames=3))
    measures = sm.measure_resynthesis(entries, speechsq.load(tiny_checkpoint()))
    assert (measures.mcd_db, measures.lsd_db, measures.n_utterances) == (3.0, 6.0, 3)


def test_an_unfinished_synthesis_dir_is_refused(tmp_path, synthesis):
    import shutil

    from speechsq.errors import IncompleteOutputError

    shutil.copytree(synthesis / "out", tmp_path / "out")
    (tmp_path / "out" / "complete.json").unlink()  # resynthesize died (or still runs)
    with pytest.raises(IncompleteOutputError, match=r"out is incomplete \(no complete.json.*run `speechsq resynthesize` again"):
        sm.read_synthesis_dir(tmp_path / "out")


def test_the_command_writes_the_report_keys(tmp_path, synthesis):
    from speechsq.features.store import ArkWriter

    pipeline = build_pipeline({**build_pipeline("zerospeech19").cfg, "n_mels": 20})
    writer = ArkWriter(tmp_path / "feats")
    spk = {}
    for s, speaker in enumerate(("V001", "V002")):
        for k in range(5):
            writer.write(f"{speaker}_{k}", pipeline.from_waveform(speech_like(0.5, seed=40 + 5 * s + k, f0=110 + 90 * s)))
            spk[f"{speaker}_{k}"] = speaker
    writer.commit()
    (tmp_path / "feats" / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(spk.items())))
    out = tmp_path / "synthesis_eval"
    assert sm.main(["--checkpoint", str(tiny_checkpoint()), "--synthesis", str(synthesis / "out"), "--speaker-feats",
                    str(tmp_path / "feats"), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert require_complete(out, "synthesis_measures").count == 1
    result = json.loads((out / "synthesis.json").read_text())
    assert {"resynthesis_mcd_db", "resynthesis_lsd_db", "conversion_speaker_match", "conversion_abx_within",
            "conversion_abx_across", "resynthesis", "conversion", "speaker_classifier", "settings"} <= set(result)
    assert result["resynthesis_mcd_db"] == result["resynthesis"]["mcd_db"]
    shares = [result["conversion"][v]["speaker_match"] for v in ("V001", "V002")]
    assert result["conversion_speaker_match"] == pytest.approx(np.mean(shares))
    assert all(share in (0.0, 50.0, 100.0) for share in shares)  # two utterances per voice
    assert result["conversion_abx_within"] is None  # no --items
    assert result["speaker_classifier"]["speakers"] == ["V001", "V002"]
