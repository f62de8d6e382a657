"""The speech VQ-VAE: every registry quantizer trains in it, jitter, speaker conditioning,
padding conventions, the eval contract (encode / reconstruct) and configs."""

import pytest
import torch
from omegaconf import OmegaConf

from speechsq.likelihoods.gaussian import FixedVarianceGaussian
from speechsq.models import MODELS, build_model
from speechsq.models.jitter import Jitter
from speechsq.models.speech import SpeechInputError, SpeechVQVAE
from speechsq.quantizers import StepContext, build_quantizer, list_quantizers

N_MELS = 80


def tiny_model(quantizer="vq", jitter=0.0, norm="batch", num_codes=16, code_dim=8, n_speakers=3, **kw):
    q = build_quantizer(quantizer, num_codes=num_codes, code_dim=code_dim)
    return SpeechVQVAE(
        q, kw.pop("likelihood", FixedVarianceGaussian(1.0)), n_speakers=n_speakers, n_mels=N_MELS,
        encoder_channels=32, norm=norm, speaker_dim=8, decoder_hidden=24, decoder_layers=1, jitter=jitter, **kw,
    )


def smooth_batch(b=4, frames=34, seed=0):
    """Slowly varying 'spectra' (learnable structure), 32 inner frames + 1 context each side."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, N_MELS // 8, frames // 4 + 1, generator=g)
    feats = torch.nn.functional.interpolate(coarse[:, None], size=(N_MELS, frames), mode="bilinear", align_corners=True)[:, 0]
    return {"feats": feats, "speaker": torch.arange(b) % 3, "lengths": torch.full((b,), frames)}


@pytest.mark.parametrize("name", list_quantizers())
def test_every_quantizer_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    model = tiny_model(name)
    batch = smooth_batch()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    mses = []
    for step in range(40):
        out = model(batch, StepContext(step=step, temperature=max(0.3, 1.0 - step / 40)))
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        mses.append(out.metrics["mse"].item())
    first, last = sum(mses[:5]) / 5, sum(mses[-5:]) / 5
    assert last < 0.5 * first, f"{name}: reconstruction MSE {first:.4f} -> {last:.4f}"


def test_every_quantizer_composes_with_the_speech_model_by_name():
    from speechsq.training.config import compose_config

    for name in list_quantizers():
        cfg = compose_config([f"quantizer={name}", "data.feats_dir=unused", "model.encoder_channels=16",
                              "quantizer.num_codes=8", "quantizer.code_dim=4"])
        cfg.model.n_speakers = 2
        model = build_model(cfg)
        assert model.quantizer.registry_name == name
        assert model.encoder.project.out_channels == model.quantizer.input_dim


def test_jitter_copies_only_neighbours_with_the_paper_probabilities():
    torch.manual_seed(0)
    jitter = Jitter(0.5).train()
    b, t = 400, 10
    lengths = torch.full((b,), t)
    lengths[::2] = 6  # every other example has 4 padded frames
    x = torch.arange(t, dtype=torch.float32).expand(b, t)[..., None].clone()
    src = jitter(x, lengths)[..., 0]
    offset = src - torch.arange(t)
    valid = torch.arange(t)[None, :] < lengths[:, None]
    assert set(offset[valid].unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert (src[:, 0] >= 0).all() and (offset[:, 0] >= 0).all()  # first frame: never from the left
    assert (src[::2, :6] <= 5).all()  # never from the padding of a short example
    assert (src[1::2] <= t - 1).all()
    inner = offset[1::2, 1:-1]
    for value, prob in [(-1.0, 0.25), (0.0, 0.5), (1.0, 0.25)]:
        assert abs((inner == value).float().mean().item() - prob) < 0.03


def test_jitter_is_identity_in_eval_and_at_p0():
    x = torch.randn(2, 9, 3)
    assert torch.equal(Jitter(0.5).eval()(x), x)
    assert torch.equal(Jitter(0.0).train()(x), x)
    with pytest.raises(ValueError, match="jitter probability"):
        Jitter(1.5)


def test_speaker_embedding_conditions_the_output():
    torch.manual_seed(0)
    model = tiny_model().eval()
    feats = smooth_batch(b=1)["feats"]
    a = model.reconstruct(feats, None, torch.tensor([0]))
    b = model.reconstruct(feats, None, torch.tensor([1]))
    assert (a - b).abs().mean() > 1e-3
    # only the embedding rows of the speakers in the batch receive gradient
    model.train()
    model(smooth_batch(b=2) | {"speaker": torch.tensor([2, 2])}).loss.backward()
    grad = model.decoder.speaker_embedding.weight.grad
    assert grad[2].abs().sum() > 0 and grad[:2].abs().sum() == 0


def test_loss_covers_the_inner_frames_only():
    torch.manual_seed(0)
    model = tiny_model().eval()  # deterministic: eval BN, no jitter
    batch = smooth_batch()
    out = model(batch)
    recon = out.outputs["reconstruction"]
    assert recon.shape == (4, N_MELS, 32)
    target = batch["feats"][:, :, 1:-1]
    torch.testing.assert_close(out.metrics["mse"], (recon - target).pow(2).mean())
    sse_per_example = 0.5 * (recon - target).pow(2).sum() / 4  # sigma^2 = 1 (log sigma^2 = 0)
    torch.testing.assert_close(out.terms["nll/recon"], sse_per_example)


def test_dimension_normalisation_divides_by_the_data_dimensions():
    batch = smooth_batch()
    torch.manual_seed(0)
    per_example = tiny_model().eval()(batch).loss
    torch.manual_seed(0)
    per_dim = tiny_model(loss_normalization="dimension").eval()(batch).loss
    torch.testing.assert_close(per_dim * N_MELS * 32, per_example)


def test_batched_padded_evaluation_equals_one_utterance_at_a_time():
    torch.manual_seed(0)
    model = tiny_model("vq", jitter=0.5)
    model(smooth_batch())  # move BatchNorm running statistics off their init
    feats = torch.rand(3, N_MELS, 41)
    lengths = torch.tensor([41, 30, 7])
    speaker = torch.tensor([0, 1, 2])
    enc = model.encode(feats, lengths)
    recon = model.reconstruct(feats, lengths, speaker)
    assert model.training  # the mode is restored
    assert torch.equal(enc["lengths"], torch.tensor([21, 15, 4]))  # ceil(T / 2)
    assert recon.shape == feats.shape and (recon[1, :, 30:] == 0).all()
    assert (enc["indices"][2, 4:] == -1).all()
    for i, n in enumerate(lengths.tolist()):
        one = model.reconstruct(feats[i : i + 1, :, :n], None, speaker[i : i + 1])
        torch.testing.assert_close(one[0], recon[i, :, :n], atol=1e-5, rtol=1e-5)
        one_enc = model.encode(feats[i : i + 1, :, :n])
        assert torch.equal(one_enc["indices"][0], enc["indices"][i, : one_enc["lengths"][0]])
    # eval z_q is exactly the codebook entry of the index (the quantizer's round trip)
    valid = enc["indices"] >= 0
    torch.testing.assert_close(model.quantizer.decode(enc["indices"])[valid], enc["z_q"][valid])
    assert torch.equal(model.reconstruct(feats, lengths, speaker), recon)  # deterministic


def test_bad_inputs_are_clear_errors():
    model = tiny_model()
    batch = smooth_batch()
    with pytest.raises(SpeechInputError, match="n_mels=80"):
        model(batch | {"feats": batch["feats"][:, :40]})
    with pytest.raises(SpeechInputError, match="even number"):
        model(batch | {"feats": batch["feats"][:, :, :33], "lengths": None})
    with pytest.raises(SpeechInputError, match="speaker ids must lie"):
        model(batch | {"speaker": torch.tensor([0, 1, 2, 3])})
    nan = batch["feats"].clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(SpeechInputError, match="NaN"):
        model(batch | {"feats": nan})
    with pytest.raises(SpeechInputError, match="lengths"):
        model.encode(batch["feats"], torch.tensor([34, 0, 3, 4]))
    with pytest.raises(SpeechInputError, match="not in the training data"):
        tiny_model(speakers=["a", "b", "c"]).speaker_ids(["a", "zz"])
    with pytest.raises(ValueError, match="loss_normalization"):
        tiny_model(loss_normalization="pixel")


def test_model_factory_errors_are_clear():
    assert "speech_vqvae" in MODELS.names()
    base = {"model": {"name": "speech_vqvae", "n_speakers": 2, "likelihood": {"name": "gaussian_fixed"}},
            "quantizer": {"name": "vq", "num_codes": 8, "code_dim": 4}}
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model(OmegaConf.merge(base, {"model": {"name": "nope"}}))
    with pytest.raises(ValueError, match="unknown likelihood"):
        build_model(OmegaConf.merge(base, {"model": {"likelihood": {"name": "laplace"}}}))
    with pytest.raises(ValueError, match="n_speakers is not set"):
        build_model(OmegaConf.merge(base, {"model": {"n_speakers": None}}))
    with pytest.raises(ValueError, match="does not take option"):
        build_model(OmegaConf.merge(base, {"quantizer": {"options": {"bogus": 1}}}))
