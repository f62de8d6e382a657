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


@pytest.mark.parametrize("padded, inner_frames", [(False, 32), (True, 24)])
def test_dimension_normalisation_divides_by_the_data_dimensions(padded, inner_frames):
    """Per-dimension loss = per-example loss / (n_mels x mean inner frames): 80 x 32 for full
    segments, 80 x 24 for the padded pair (its context frames do not count)."""
    batch = _padded_pair()[0] if padded else smooth_batch()
    torch.manual_seed(0)
    per_example = tiny_model().eval()(batch).loss
    torch.manual_seed(0)
    per_dim = tiny_model(loss_normalization="dimension").eval()(batch).loss
    torch.testing.assert_close(per_dim * N_MELS * inner_frames, per_example)


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


def _fixed_uniforms(monkeypatch, values):
    """Make the jitter's uniforms the given (B, T) numbers."""
    values = torch.as_tensor(values, dtype=torch.float32)
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: values.clone())


def test_jitter_sources_for_given_uniforms_by_hand(monkeypatch):
    """p = 0.5: u < 0.25 takes the left neighbour, u > 0.75 the right one, else the frame
    itself; the first frame cannot go left, the last valid frame cannot go right."""
    u = [[0.10, 0.10, 0.50, 0.90, 0.20, 0.95],  # full length 6
         [0.90, 0.24, 0.76, 0.95, 0.90, 0.10]]  # 4 valid frames
    _fixed_uniforms(monkeypatch, u)
    jitter = Jitter(0.5).train()
    src = jitter.source_indices(2, 6, torch.tensor([6, 4]), "cpu")
    assert src.tolist() == [[0, 0, 2, 4, 3, 5], [1, 0, 3, 3, 3, 3]]
    # without lengths the last frame of the tensor is the last valid one
    _fixed_uniforms(monkeypatch, [[0.1, 0.5, 0.99]])
    x = torch.tensor([[[10.0], [11.0], [12.0]]])
    assert jitter(x)[0, :, 0].tolist() == [10.0, 11.0, 12.0]
    _fixed_uniforms(monkeypatch, [[0.99, 0.1, 0.1]])
    assert jitter(x)[0, :, 0].tolist() == [11.0, 10.0, 11.0]
    # p = 1: never kept (u < 1/2 left, u > 1/2 right)
    _fixed_uniforms(monkeypatch, [[0.4, 0.6, 0.3]])
    assert Jitter(1.0).train().source_indices(1, 3, None, "cpu").tolist() == [[0, 2, 1]]


def test_jitter_replaces_the_end_frames_with_the_paper_probabilities():
    """The ends are clamped: the first frame is kept with probability 1 - p/2 (u >= p/2), the
    last valid frame likewise; both take their only neighbour with probability p/2."""
    torch.manual_seed(1)
    b, t = 20000, 5
    lengths = torch.full((b,), 4)
    src = Jitter(0.5).train().source_indices(b, t, lengths, "cpu")
    first, last = src[:, 0], src[:, 3]
    assert set(first.unique().tolist()) == {0, 1} and set(last.unique().tolist()) == {2, 3}
    # standard error sqrt(0.25 * 0.75 / 20000) = 0.003
    assert abs((first == 0).float().mean().item() - 0.75) < 0.012
    assert abs((last == 3).float().mean().item() - 0.75) < 0.012


def _padded_pair():
    """Two training segments in one batch: 32 and 16 inner frames (+1 context each side)."""
    batch = smooth_batch(b=2, seed=3)
    batch["lengths"] = torch.tensor([34, 18])
    batch["feats"][1, :, 18:] = 0.0
    batch["speaker"] = torch.tensor([1, 2])
    alone = [{"feats": batch["feats"][:1], "speaker": batch["speaker"][:1], "lengths": torch.tensor([34])},
             {"feats": batch["feats"][1:, :, :18], "speaker": batch["speaker"][1:], "lengths": torch.tensor([18])}]
    return batch, alone


@pytest.mark.parametrize("u", [0.99, 0.01, 0.5])
def test_padded_training_batch_loss_is_the_mean_of_each_segment_alone(monkeypatch, u):
    """Eval-mode BatchNorm, jitter on and forced to the right (0.99), the left (0.01) or kept:
    the padded batch's loss, per example, is the average of the examples' losses alone; a
    batch with one full-length segment is still padded, and jitter never reaches into padding."""
    torch.manual_seed(0)
    model = tiny_model(jitter=0.5).eval()
    model.jitter.train()
    batch, alone = _padded_pair()
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, u))
    together = model(batch)
    singles = [model(one) for one in alone]
    torch.testing.assert_close(together.loss, (singles[0].loss + singles[1].loss) / 2)
    torch.testing.assert_close(together.terms["nll/recon"], (singles[0].terms["nll/recon"] + singles[1].terms["nll/recon"]) / 2)


def test_decoder_packing_covers_every_frame_of_a_full_length_sequence():
    torch.manual_seed(0)
    model = tiny_model().eval()
    z = torch.randn(2, 5, 8)
    speaker = torch.tensor([0, 2])
    plain = model.decoder(z, speaker)
    assert plain.shape == (2, N_MELS, 10)
    torch.testing.assert_close(model.decoder(z, speaker, torch.tensor([5, 5])), plain)
    # a shorter sequence in the batch decodes as it would alone
    short = model.decoder(z, speaker, torch.tensor([5, 3]))
    torch.testing.assert_close(short[1, :, :6], model.decoder(z[1:, :3], speaker[1:])[0])


def test_decode_masks_beyond_twice_the_latent_length_and_keeps_the_mode():
    torch.manual_seed(0)
    model = tiny_model().eval()
    z = torch.randn(2, 5, 8)
    speaker = torch.tensor([1, 0])
    out = model.decode(z, speaker, torch.tensor([5, 3]))
    assert out.shape == (2, N_MELS, 10)
    assert (out[1, :, 6:] == 0).all() and (out[1, :, :6] != 0).all()
    torch.testing.assert_close(out[1, :, :6], model.decode(z[1:, :3], speaker[1:])[0])
    torch.testing.assert_close(out[0], model.decode(z[:1], speaker[:1])[0])
    assert not model.training  # eval stays eval
    model.encode(smooth_batch(b=1)["feats"])
    assert not model.training
    model.train()
    model.decode(z, speaker)
    assert model.training


def test_batched_encoding_gives_each_utterances_own_encoder_outputs():
    """Odd lengths get one replicated last frame, never the padding that follows them in a batch."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    feats = torch.rand(3, N_MELS, 12) + 1.0  # the frames beyond each length are not zero
    lengths = torch.tensor([12, 7, 5])
    enc = model.encode(feats, lengths)
    assert enc["lengths"].tolist() == [6, 4, 3]
    for i, n in enumerate(lengths.tolist()):
        one = model.encode(feats[i : i + 1, :, :n])
        torch.testing.assert_close(enc["z_e"][i, : (n + 1) // 2], one["z_e"][0], atol=1e-5, rtol=1e-5)
    # an odd utterance encodes as the same utterance with its last frame repeated once
    five = feats[2:, :, :5]
    torch.testing.assert_close(model.encode(five)["z_e"], model.encode(torch.cat([five, five[:, :, -1:]], 2))["z_e"])


def test_data_options_the_model_cannot_train_on_are_clear_errors():
    from speechsq.models.speech import check_data_compatibility

    check_data_compatibility({"n_mels": 80}, {"segment_frames": 32, "context_frames": 1, "n_mels": 80})
    with pytest.raises(ValueError, match="data.segment_frames=33: the encoder downsamples by 2"):
        check_data_compatibility({}, {"segment_frames": 33})
    with pytest.raises(ValueError, match="data.segment_frames=0"):
        check_data_compatibility({}, {"segment_frames": 0})
    with pytest.raises(ValueError, match="data.context_frames=2"):
        check_data_compatibility({}, {"context_frames": 2})
    with pytest.raises(ValueError, match="data.n_mels=40 but model.n_mels=80"):
        check_data_compatibility({"n_mels": 80}, {"n_mels": 40})


def test_speech_model_defaults_are_the_papers():
    """SQ-VAE App. E.2.2 (van Niekerk et al.): 768 encoder channels, 64-dim speaker embedding,
    2 BiGRU layers of 128, jitter 0.5, 80 mel bins, when a config leaves them out."""
    cfg = OmegaConf.create({"model": {"name": "speech_vqvae", "n_speakers": 2, "likelihood": {"name": "gaussian_fixed"}},
                            "quantizer": {"name": "vq", "num_codes": 8, "code_dim": 4}})
    model = build_model(cfg)
    assert model.jitter.p == 0.5 and model.n_mels == 80
    assert model.decoder.speaker_embedding.embedding_dim == 64
    assert (model.decoder.rnn.hidden_size, model.decoder.rnn.num_layers, model.decoder.rnn.bidirectional) == (128, 2, True)
    assert model.encoder.project.in_channels == 768 and model.decoder.upsample == 2
    assert model.loss_normalization == "example"
