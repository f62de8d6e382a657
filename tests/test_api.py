"""The public API: speechsq.load -> encode / decode / vocode, exact round trips, any input
rate and channel count, the README example, and the model's TensorBoard summaries."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_speech import N_MELS, speech_like, tiny_checkpoint

import speechsq
from speechsq.errors import SpeechsqError
from speechsq.api import (
    README_EXAMPLE,
    Encoding,
    UnitCodec,
    UnitsError,
    expand_units,
    run_length_encode,
)


@pytest.fixture(scope="module")
def codec() -> UnitCodec:
    return speechsq.load(tiny_checkpoint("vq_ema"))


@pytest.fixture(scope="module")
def wav() -> np.ndarray:
    return speech_like(1.0, seed=7)


# ----------------------------------------------------------------------------- run lengths


def test_run_length_encoding_by_hand_and_back():
    units, durations = run_length_encode(np.array([3, 3, 5, 3, 3, 3]))
    assert units.tolist() == [3, 5, 3] and durations.tolist() == [2, 1, 3]
    assert expand_units(units, durations).tolist() == [3, 3, 5, 3, 3, 3]
    rows = torch.tensor([[1, 2], [1, 2], [1, 3], [1, 2]])  # several codes per frame (depthwise)
    units, durations = run_length_encode(rows)
    assert units.tolist() == [[1, 2], [1, 3], [1, 2]] and durations.tolist() == [2, 1, 1]
    assert torch.equal(expand_units(units, durations), rows)
    empty_units, empty_durations = run_length_encode(np.zeros(0, dtype=int))
    assert empty_units.numel() == 0 and empty_durations.numel() == 0
    assert expand_units([4, 2], np.array([2.0, 1.0])).tolist() == [4, 4, 2]


def test_expand_units_rejects_bad_durations():
    with pytest.raises(UnitsError, match="one duration per unit"):
        expand_units([1, 2], [1])
    with pytest.raises(UnitsError, match=r">= 1 latent frame, got \[0\]"):
        expand_units([1, 2], [1, 0])
    with pytest.raises(UnitsError, match="whole numbers"):
        expand_units([1], [1.5])


# ----------------------------------------------------------------------------- encode / decode


def test_encoding_fields_and_textlesslib_names(codec, wav):
    enc = codec.encode(wav, 16000)
    frames = 1 + len(wav) // 160
    assert isinstance(enc, Encoding) and enc.num_frames == frames and enc.conversion == "unchanged"
    assert len(enc) == (frames + 1) // 2 and enc.frame_shift == 0.02
    assert int(enc.durations.sum()) == len(enc.frame_units)
    assert torch.equal(expand_units(enc.units, enc.durations), enc.frame_units)
    assert len(enc.units) > 1  # the trained tiny model uses several codes: the round trips below mean something
    assert enc.latents.shape == (len(enc), 4) and enc.quantized.shape == (len(enc), 4)
    assert enc.frame_units.dtype == torch.int64 and enc.latents.dtype == torch.float32
    assert (codec.vocab_size, codec.code_hop_size, codec.expected_sample_rate) == (8, 320, 16000)
    assert codec.speakers == ["V001", "V002"] and codec.sample_rate == 16000


def test_decode_of_an_encoding_equals_model_reconstruct(codec, wav):
    feats, _ = codec.features(wav, 16000)
    enc = codec.encode_features(feats)
    for speaker in ("V001", "V002"):
        expected = codec.model.reconstruct(feats[None], None, torch.tensor([codec.speaker_id(speaker)]))[0]
        assert torch.equal(codec.decode(enc, speaker), expected)
    assert torch.equal(codec.decode(enc, 1), codec.decode(enc, "V002"))


def test_decode_of_codes_and_of_units_with_durations_match_exactly(codec, wav):
    enc = codec.encode(wav, 16000)
    from_frames = codec.decode(enc.frame_units, "V001")
    assert from_frames.shape == (N_MELS, 2 * len(enc))
    assert torch.equal(from_frames[:, : enc.num_frames], codec.decode(enc, "V001"))
    assert torch.equal(codec.decode(enc.units, "V001", enc.durations), from_frames)
    assert torch.equal(codec.decode(enc.units.tolist(), "V001", enc.durations.tolist()), from_frames)
    other = codec.decode(enc.frame_units, "V002")
    assert not torch.equal(other, from_frames)  # the speaker reaches the decoder


def test_any_rate_and_channel_count(codec, wav, caplog):
    import librosa

    mono = codec.encode(wav, 16000)
    stereo = codec.encode(np.stack([wav, wav], axis=1), 16000)  # (samples, channels): soundfile's layout
    assert stereo.conversion == "mixed 2 channels down to mono"
    assert torch.equal(stereo.frame_units, mono.frame_units) and torch.equal(stereo.latents, mono.latents)
    channels_first = codec.encode(torch.from_numpy(np.stack([wav, wav])), 16000)  # torch's layout
    assert torch.equal(channels_first.latents, mono.latents)
    with caplog.at_level("INFO", logger="speechsq.api"):
        resampled = codec.encode(librosa.resample(wav, orig_sr=16000, target_sr=22050), 22050)
    assert resampled.conversion == "resampled 22050 Hz -> 16000 Hz"
    assert "input waveform resampled 22050 Hz -> 16000 Hz" in caplog.text
    assert abs(resampled.num_frames - mono.num_frames) <= 1


def test_bad_inputs_give_clear_errors(codec, wav):
    from speechsq.data_prep.audio import AudioProblem

    with pytest.raises(UnitsError, match=r"unknown speaker 'S999'; the model knows: V001, V002"):
        codec.decode(codec.encode(wav, 16000), "S999")
    with pytest.raises(UnitsError, match=r"speaker id 2 is not in \[0, 2\)"):
        codec.decode([1, 2], 2)
    with pytest.raises(UnitsError, match=r"unit indices must lie in \[0, 8\)"):
        codec.decode([1, 8], "V001")
    with pytest.raises(UnitsError, match=r"unit indices must lie in \[0, 8\)"):
        codec.decode([1, -1], "V001")  # -1 is the quantizer's padding marker, not a unit
    with pytest.raises(UnitsError, match="integer code indices"):
        codec.decode(np.array([1.0, 2.0]), "V001")
    with pytest.raises(UnitsError, match="no units"):
        codec.decode([], "V001")
    with pytest.raises(UnitsError, match="sample_rate must be a positive integer"):
        codec.encode(wav, 0)
    with pytest.raises(UnitsError, match="float samples"):
        codec.encode((wav * 30000).astype(np.int16), 16000)
    with pytest.raises(AudioProblem, match="silent"):
        codec.encode(np.zeros(16000), 16000)
    with pytest.raises(AudioProblem, match="non-finite"):
        codec.encode(np.full(16000, np.nan), 16000)
    with pytest.raises(UnitsError, match=r"log-Mel must be \(n_mels=20, frames\)"):
        codec.encode_features(torch.zeros(5, N_MELS))
    with pytest.raises(UnitsError, match="carries its own durations"):
        enc = codec.encode(wav, 16000)
        codec.decode(enc, "V001", enc.durations)


def test_vocode_length_and_conversion(codec, wav):
    enc = codec.encode(wav, 16000)
    mel = codec.decode(enc.units, "V001", enc.durations)
    out = codec.vocode(mel)
    assert out.shape == (160 * (mel.shape[1] - 1),) and out.dtype == torch.float32
    converted = codec.convert(wav, 16000, "V002")
    assert torch.equal(converted, codec.vocode(codec.decode(enc, "V002")))


def test_package_top_level_names():
    import speechsq.api

    assert speechsq.load is speechsq.api.load and speechsq.Encoding is Encoding
    assert {"load", "UnitCodec", "Encoding", "build_vocoder"} <= set(dir(speechsq))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        speechsq.nothing  # noqa: B018


def test_the_readme_example_runs(tmp_path, monkeypatch, wav):
    """README_EXAMPLE (the README's 5 lines) with its paths pointing at the tiny model and a
    44.1 kHz stereo file."""
    import librosa

    assert len(README_EXAMPLE.strip().splitlines()) == 5
    assert textwrap.indent(README_EXAMPLE, "    ") in speechsq.api.__doc__  # the docstring shows the same lines
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert README_EXAMPLE in readme  # ... and so does the README
    source = tmp_path / "input.wav"
    stereo = librosa.resample(wav, orig_sr=16000, target_sr=44100)
    sf.write(source, np.stack([stereo, 0.5 * stereo], axis=1), 44100)
    code = README_EXAMPLE.replace("recipes/zerospeech19/exp/mini/sq_gauss1/seed1/checkpoints/last.pt", str(tiny_checkpoint("vq_ema")))
    code = code.replace("recipes/zerospeech19/corpus/embedded/test/S101_0154622531.wav", str(source))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README", "exec"), namespace)
    out, rate = sf.read(tmp_path / "V001.wav")
    enc = namespace["enc"]
    assert rate == 16000 and enc.conversion == "mixed 2 channels down to mono, resampled 44100 Hz -> 16000 Hz"
    assert len(out) == 160 * (2 * len(enc) - 1)


def test_standardised_features_need_their_statistics(tmp_path):
    from omegaconf import OmegaConf

    from speechsq.models import build_model
    from speechsq.training import compose_config

    cfg = compose_config(["experiment=mini", "preprocessing=vctk", "quantizer=vq_ema", "model.n_speakers=1",
                          "model.encoder_channels=8", "quantizer.num_codes=4", "quantizer.code_dim=4",
                          f"data.feats_dir={tmp_path / 'nofeats'}"])
    path = tmp_path / "last.pt"
    torch.save({"model": build_model(cfg).state_dict(), "step": 0, "config": OmegaConf.to_container(cfg, resolve=True)}, path)
    bare = speechsq.load(path)
    with pytest.raises(UnitsError, match="cmvn='feats/train/cmvn.npz'"):
        bare.encode(speech_like(0.5, 24000), 24000)
    with pytest.raises(SpeechsqError, match="cmvn='feats/train/cmvn.npz'"):
        bare.vocode(torch.zeros(80, 4))
    from speechsq.features import Cmvn

    (tmp_path / "nofeats").mkdir()
    Cmvn(np.full(80, -50.0, np.float32), np.full(80, 5.0, np.float32), 10).save(tmp_path / "nofeats" / "cmvn.npz")
    assert float(speechsq.load(path).cmvn.std[0]) == 5.0  # the training features' statistics
    Cmvn(np.full(80, -40.0, np.float32), np.full(80, 10.0, np.float32), 10).save(tmp_path / "cmvn.npz")
    found = speechsq.load(path)  # next to the checkpoint (an exported model directory) comes first
    assert float(found.cmvn.std[0]) == 10.0
    given = speechsq.load(path, cmvn=tmp_path / "nofeats" / "cmvn.npz")
    assert float(given.cmvn.std[0]) == 5.0
    assert found.encode(speech_like(0.5, 24000), 24000).num_frames == 1 + 12000 // 300


# ----------------------------------------------------------------------------- model pieces


def test_model_decode_checks_its_input(codec):
    from speechsq.models.speech import SpeechInputError

    with pytest.raises(SpeechInputError, match=r"codes must be \(B, T', code_dim=4\)"):
        codec.model.decode(torch.zeros(1, 5, 3), torch.tensor([0]))
    padded = codec.model.decode(torch.ones(2, 3, 4), torch.tensor([0, 1]), torch.tensor([3, 2]))
    assert padded.shape == (2, N_MELS, 6) and torch.count_nonzero(padded[1, :, 4:]) == 0


def test_summaries_follow_the_trainer_contract(codec):
    from speechsq.eval.plots import feature_db

    model = codec.model.train()  # as the trainer holds it
    feats = codec.features(speech_like(0.34, seed=8), 16000)[0][:, :34]
    batch = {"feats": feats[None].repeat(2, 1, 1), "speaker": torch.tensor([1, 0]), "lengths": torch.tensor([34, 30])}
    out = model.summaries(batch)
    assert set(out) == {"images", "audio", "text"}
    image = out["images"]["spectrograms"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert set(out["audio"]) == {"original", "reconstruction", "conversion"}
    for wav, rate in out["audio"].values():
        assert rate == 16000 and wav.shape == (160 * 33,)
    reconstruction = model.reconstruct(feats[None], None, torch.tensor([1]))[0].numpy()
    mse = feature_db(model.features["preprocessing"]).mse_db2(reconstruction, feats.numpy())
    text = out["text"]["reconstruction"]
    assert f"reconstruction MSE {mse:.2f} dB² over 34 frames" in text
    assert "input (V002)" in text and "conversion to V001's voice" in text
    assert model.training  # summaries leave the mode as they found it
    model.eval()
