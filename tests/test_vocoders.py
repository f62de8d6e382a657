"""Vocoders: exact inversion of the feature normalisation, the mel filterbank by NNLS,
Griffin-Lim, and the Parallel WaveGAN adapter (file safety, analysis checks, its input)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from tiny_speech import speech_like

from speechsq.features import Cmvn, build_pipeline
from speechsq.vocoders import (
    VOCODERS,
    MelToLinear,
    VocoderError,
    build_inverse,
    build_vocoder,
    deemphasis,
    preemphasis,
)
from speechsq.vocoders.parallel_wavegan import ParallelWaveGANVocoder, load_generator_state


def reanalyse(pipeline, mel_frames: np.ndarray) -> np.ndarray:
    """The pipeline's own features of given (frames, n_mels) mel magnitudes: its analysis
    stage is replaced by the given magnitudes, everything after it runs unchanged."""
    stub = copy.copy(pipeline)
    stub.mel = lambda wav: mel_frames
    return stub.from_waveform(np.ones(len(mel_frames) * pipeline.hop_length))


def vctk_cmvn(n_mels: int = 80) -> Cmvn:
    return Cmvn(np.linspace(-60, -20, n_mels).astype(np.float32), np.linspace(8, 16, n_mels).astype(np.float32), 100)


# ----------------------------------------------------------------------------- exact steps


def test_preemphasis_and_deemphasis_by_hand_and_inverse():
    np.testing.assert_allclose(preemphasis([1.0, 2.0, 3.0], 0.5), [1.0, 1.5, 2.0], rtol=0, atol=0)
    np.testing.assert_allclose(deemphasis([1.0, 1.5, 2.0], 0.5), [1.0, 2.0, 3.0], rtol=0, atol=0)
    x = np.random.default_rng(0).uniform(-1, 1, 5000)
    np.testing.assert_allclose(deemphasis(preemphasis(x, 0.97), 0.97), x, rtol=0, atol=1e-13)


def test_zerospeech_inverse_is_exact_and_finishes_with_deemphasis():
    inverse = build_inverse(build_pipeline("zerospeech19"))
    feats = torch.tensor([[1.0, 0.75, 0.5]]).repeat(80, 1)  # dB / 80 + 1
    np.testing.assert_allclose(inverse.to_db(feats)[0].numpy(), [0.0, -20.0, -40.0])
    np.testing.assert_allclose(inverse.to_mel(feats)[0].numpy(), [1.0, 0.1, 0.01], rtol=1e-12)
    assert float(inverse.to_mel(torch.full((80, 1), -5.0)).min()) == 1e-5  # below amin: the pipeline's floor
    x = np.random.default_rng(1).uniform(-1, 1, 400)
    np.testing.assert_allclose(inverse.finish(preemphasis(x, 0.97)), x, rtol=0, atol=1e-13)
    described = inverse.described_waveform(np.array([0.1, -0.5, 0.25]))
    np.testing.assert_allclose(described, [0.1998, -0.999, 0.4995])  # peak-normalised to 0.999

    no_offset = build_pipeline("zerospeech19")
    no_offset.add_one = False
    np.testing.assert_allclose(build_inverse(no_offset).to_db(torch.tensor([[-0.5]])).numpy(), [[-40.0]])


def test_vctk_inverse_undoes_cmvn_and_dB_and_needs_the_statistics():
    cmvn = vctk_cmvn()
    inverse = build_inverse(build_pipeline("vctk"), cmvn)
    feats = torch.full((80, 2), 1.5)
    feats[:, 1] = -30.0  # far below the floor
    expected_db = 1.5 * cmvn.std.astype(np.float64) + cmvn.mean
    np.testing.assert_allclose(inverse.to_db(feats.double())[:, 0].numpy(), expected_db, rtol=1e-6)
    np.testing.assert_allclose(inverse.to_mel(feats)[:, 0].numpy(), 10 ** (expected_db / 20), rtol=1e-5)
    assert float(inverse.to_mel(feats)[:, 1].max()) == 1e-10  # the -200 dB floor
    assert inverse.finish(np.array([0.5, -0.25])).tolist() == [0.5, -0.25]  # no pre-emphasis to undo
    with pytest.raises(VocoderError, match="cmvn.npz"):
        build_inverse(build_pipeline("vctk"))


@pytest.mark.parametrize("name", ["zerospeech19", "vctk"])
def test_features_inverse_features_round_trip_on_the_mel_magnitudes(name):
    pipeline = build_pipeline(name)
    cmvn = vctk_cmvn() if name == "vctk" else None
    wav = speech_like(0.6, pipeline.sample_rate, seed=3)
    feats = pipeline.from_waveform(wav)
    if cmvn is not None:
        feats = cmvn.apply(feats)
    inverse = build_inverse(pipeline, cmvn, nnls_tolerance_db=1e-4, nnls_max_iter=3000)
    linear = inverse.to_linear(torch.from_numpy(feats.T))
    assert linear.shape == (pipeline.stft.n_fft // 2 + 1, feats.shape[0])
    assert float(linear.min()) >= 0.0  # a magnitude spectrum
    mel = linear[: pipeline.mel_basis_t.shape[0]].T.numpy() @ pipeline.mel_basis_t.astype(np.float64)
    again = reanalyse(pipeline, mel)
    if cmvn is not None:
        again = cmvn.apply(again)
        error_db = np.abs(again - feats) * cmvn.std
    else:
        error_db = np.abs(again - feats) * pipeline.top_db
    assert error_db.max() < 2e-3  # dB; float32 features resolve ~1e-4 of their range


def test_mel_to_linear_stops_at_its_tolerance():
    pipeline = build_pipeline("zerospeech19")
    mel = torch.from_numpy(pipeline.mel(speech_like(0.3, seed=4)).T.astype(np.float64)).clamp_min(1e-5)
    loose = MelToLinear(pipeline.mel_basis_t, 1025, tolerance_db=1.0, max_iter=500)
    tight = MelToLinear(pipeline.mel_basis_t, 1025, tolerance_db=1e-4, max_iter=500)
    loose(mel), tight(mel)
    assert loose.iterations % 10 == 0 and loose.iterations < tight.iterations < 500
    fit = torch.from_numpy(pipeline.mel_basis_t.T.astype(np.float64)) @ tight(mel)[:1024]
    assert float((20 * torch.log10(fit / mel)).abs().max()) <= 1e-4


# ----------------------------------------------------------------------------- Griffin-Lim


def test_griffin_lim_length_determinism_and_reanalysis():
    pipeline = build_pipeline("zerospeech19")
    feats = torch.from_numpy(pipeline.from_waveform(speech_like(0.5, seed=5)).T.copy())
    vocoder = build_vocoder("griffin_lim", "zerospeech19", n_iter=16)
    wav = vocoder(feats)
    assert wav.dtype == torch.float32 and wav.shape == (pipeline.hop_length * (feats.shape[1] - 1),)
    assert torch.equal(wav, vocoder(feats))  # seeded initial phase
    assert not torch.equal(wav, build_vocoder("griffin_lim", "zerospeech19", n_iter=16, seed=1)(feats))
    assert pipeline.from_waveform(wav.numpy().astype(np.float64)).shape == (feats.shape[1], 80)
    one = build_vocoder("griffin_lim", "zerospeech19", n_iter=1)(feats)

    def error(w):
        return float(np.abs(pipeline.from_waveform(w.numpy().astype(np.float64)).T - feats.numpy()).mean())

    assert error(wav) < error(one)  # the iterations make the spectrogram more consistent


def test_vocoder_registry_and_input_errors():
    assert {"griffin_lim", "parallel_wavegan"} <= set(VOCODERS.names())
    with pytest.raises(VocoderError, match="unknown vocoder 'wavenet'; known: griffin_lim, parallel_wavegan"):
        build_vocoder("wavenet", "zerospeech19")
    with pytest.raises(VocoderError, match="does not accept options"):
        build_vocoder("griffin_lim", "zerospeech19", bogus=1)
    vocoder = build_vocoder("griffin_lim", "zerospeech19")
    with pytest.raises(VocoderError, match=r"\(n_mels=80, frames\)"):
        vocoder(torch.zeros(10, 80))
    with pytest.raises(VocoderError, match="NaN"):
        vocoder(torch.full((80, 5), float("nan")))
    with pytest.raises(VocoderError, match="cmvn.npz"):
        build_vocoder("griffin_lim", "vctk")
    with pytest.raises(ValueError, match="n_iter"):
        build_vocoder("griffin_lim", "zerospeech19", n_iter=0)


# ----------------------------------------------------------------------------- Parallel WaveGAN


class FakeGenerator(torch.nn.Module):
    """Records what it is given; one learnable scale so that weights are loaded."""

    def __init__(self, hop: int = 300):
        super().__init__()
        self.hop = hop
        self.gain = torch.nn.Parameter(torch.zeros(1))
        self.seen = None

    def inference(self, c, normalize_before=False):
        assert normalize_before is False
        self.seen = c
        return torch.ones(c.shape[0] * self.hop, 1) * self.gain


class Opaque:  # any Python object: unpickling it could have run code
    pass


VCTK_ANALYSIS = {"sampling_rate": 24000, "fft_size": 2048, "hop_size": 300, "win_length": 1200, "num_mels": 80,
                 "fmin": 80, "fmax": 7600, "window": "hann", "log_base": 10.0}


def pwg_files(tmp_path, analysis=None, extra_state=None):
    generator = FakeGenerator()
    with torch.no_grad():
        generator.gain.fill_(0.5)
    state = {"model": {"generator": generator.state_dict(), "discriminator": {}}, "steps": 10, **(extra_state or {})}
    torch.save(state, tmp_path / "checkpoint-10steps.pkl")
    config = {**VCTK_ANALYSIS, **(analysis or {}), "generator_type": "FakeGenerator", "generator_params": {"hop": 300}}
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    stats = np.stack([np.linspace(-4, -2, 80), np.linspace(0.5, 1.5, 80)])
    np.save(tmp_path / "stats.npy", stats)
    return tmp_path / "checkpoint-10steps.pkl", stats


def test_parallel_wavegan_adapter_feeds_standardised_log10_mel(tmp_path):
    checkpoint, stats = pwg_files(tmp_path)
    cmvn = vctk_cmvn()
    vocoder = build_vocoder("parallel_wavegan", "vctk", cmvn, checkpoint=checkpoint, generator_factory=FakeGenerator)
    feats = torch.from_numpy(np.random.default_rng(0).normal(size=(80, 7)).astype(np.float32))
    wav = vocoder(feats)
    assert wav.shape == (7 * 300,) and torch.equal(wav, torch.full((2100,), 0.5))  # loaded weights
    db = feats.numpy().astype(np.float64) * cmvn.std[:, None] + cmvn.mean[:, None]
    log10_mel = np.log10(np.maximum(10 ** (db / 20), 1e-10))
    expected = ((log10_mel - stats[0][:, None]) / stats[1][:, None]).T
    np.testing.assert_allclose(vocoder.generator.seen.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert vocoder.sample_rate == 24000


def test_parallel_wavegan_adapter_refuses_what_does_not_fit(tmp_path):
    checkpoint, _ = pwg_files(tmp_path, analysis={"hop_size": 256, "fmax": None})
    cmvn = vctk_cmvn()
    with pytest.raises(VocoderError, match=r"hop_size: vocoder 256, features 300; fmax: vocoder 12000.0, features 7600.0\)"):
        build_vocoder("parallel_wavegan", "vctk", cmvn, checkpoint=checkpoint, generator_factory=FakeGenerator)
    windowed = tmp_path / "windowed"
    windowed.mkdir()
    pwg_files(windowed, analysis={"window": "hamming"})
    with pytest.raises(VocoderError, match=r"\(window: vocoder hamming, features hann\)"):
        build_vocoder("parallel_wavegan", "vctk", cmvn, checkpoint=windowed / "checkpoint-10steps.pkl",
                      generator_factory=FakeGenerator)
    with pytest.raises(VocoderError, match="pre-emphasised"):
        build_vocoder("parallel_wavegan", "zerospeech19", checkpoint=checkpoint, generator_factory=FakeGenerator)
    with pytest.raises(VocoderError, match="needs checkpoint=PATH"):
        build_vocoder("parallel_wavegan", "vctk", cmvn)
    good = tmp_path / "good"
    good.mkdir()
    pwg_files(good)
    with pytest.raises(VocoderError, match="checkpoint .*nope.pkl does not exist"):
        build_vocoder("parallel_wavegan", "vctk", cmvn, checkpoint=good / "nope.pkl", generator_factory=FakeGenerator)
    (good / "stats.npy").unlink()
    with pytest.raises(VocoderError, match="stats.h5 do not exist"):
        build_vocoder("parallel_wavegan", "vctk", cmvn, checkpoint=good / "checkpoint-10steps.pkl", generator_factory=FakeGenerator)


def test_parallel_wavegan_checkpoint_is_not_unpickled_without_opt_in(tmp_path):
    checkpoint, _ = pwg_files(tmp_path, extra_state={"note": Opaque()})
    with pytest.raises(VocoderError, match="trust_checkpoint=True"):
        load_generator_state(checkpoint, trust_checkpoint=False)
    assert set(load_generator_state(checkpoint, trust_checkpoint=True)) == {"gain"}
    vocoder = build_vocoder("parallel_wavegan", "vctk", vctk_cmvn(), checkpoint=checkpoint, trust_checkpoint=True,
                            generator_factory=FakeGenerator)
    assert isinstance(vocoder, ParallelWaveGANVocoder)
    (tmp_path / "config.yml").write_text("generator_params: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(VocoderError, match="not plain YAML"):
        build_vocoder("parallel_wavegan", "vctk", vctk_cmvn(), checkpoint=checkpoint, trust_checkpoint=True,
                      generator_factory=FakeGenerator)


def test_a_real_parallel_wavegan_hifigan_checkpoint(tmp_path):
    """The `vocoder` extra installed: a HiFi-GAN generator of the package, saved the way
    parallel-wavegan-train saves it, loaded and run through the adapter."""
    pytest.importorskip("parallel_wavegan", reason="the `vocoder` extra (parallel-wavegan) is not installed")
    from speechsq.vocoders.parallel_wavegan import import_parallel_wavegan

    models = import_parallel_wavegan()
    params = {"in_channels": 80, "out_channels": 1, "channels": 16, "upsample_scales": [5, 5, 4, 3],
              "upsample_kernel_sizes": [10, 10, 8, 6], "resblock_kernel_sizes": [3], "resblock_dilations": [[1, 3]]}
    torch.manual_seed(0)
    generator = models.HiFiGANGenerator(**params)
    torch.save({"model": {"generator": generator.state_dict()}, "steps": 1}, tmp_path / "checkpoint-1steps.pkl")
    (tmp_path / "config.yml").write_text(yaml.safe_dump({**VCTK_ANALYSIS, "generator_type": "HiFiGANGenerator",
                                                         "generator_params": params}))
    np.save(tmp_path / "stats.npy", np.stack([np.zeros(80), np.ones(80)]))
    vocoder = build_vocoder("parallel_wavegan", "vctk", vctk_cmvn(), checkpoint=tmp_path / "checkpoint-1steps.pkl")
    feats = torch.from_numpy(np.random.default_rng(1).normal(size=(80, 6)).astype(np.float32))
    wav = vocoder(feats)
    generator.remove_weight_norm()
    expected = generator.eval().inference(vocoder.vocoder_input(feats), normalize_before=False).reshape(-1)
    assert wav.shape == (6 * 300,)
    torch.testing.assert_close(wav, expected.detach().float())
