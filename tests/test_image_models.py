"""Image networks and the image VQ-VAE: the papers' grids, exact code round trips, clear
errors, and a tiny model that learns a few digits through the shared Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechsq.data.images import load_image_dataset
from speechsq.likelihoods import LIKELIHOODS
from speechsq.models import MODELS, build_model
from speechsq.models.image import IMAGE_NETWORKS, ChannelMean, ImageInputError, ImageVQVAE, ResBlock, VarianceBranchEncoder
from speechsq.quantizers import StepContext, build_quantizer


def _model(network="sqvae_mnist", channels=1, num_categories=None, likelihood=None, quantizer="vq", **q_options):
    q = build_quantizer(quantizer, num_codes=8, code_dim=16, **q_options)
    if likelihood is None:
        likelihood = LIKELIHOODS.get("gaussian_fixed")(sigma2=0.1)
    return ImageVQVAE(q, likelihood, network, channels, num_categories, width=16)


# (network, image side, channels) -> the latent side the paper states
PAPER_GRIDS = [
    ("sqvae_two_layer", 28, 1, 7),  # App. D.3
    ("sqvae_mnist", 28, 1, 7),  # App. E.1.2
    ("sqvae_fashion_mnist", 28, 1, 7),
    ("sqvae_cifar", 32, 3, 8),  # w/4
    ("sqvae_cifar", 64, 3, 16),  # CelebA 64: 16 x 16 (App. E.1.2, the 72-dim VAE argument)
    ("sqvae_celebamask", 64, 1, 8),  # App. E.3.2
    ("sqvae_gray_celeba", 64, 1, 8),
    ("edvae", 32, 3, 8),  # EdVAE App. D.2: w/4
    ("sqvae_cifar_official", 32, 3, 8),  # sony/sqvae net_32.py
    ("sqvae_celeba_official", 64, 3, 16),  # sony/sqvae net_64.py
]


@pytest.mark.parametrize("network,side,channels,latent", PAPER_GRIDS)
def test_networks_give_the_papers_latent_grid_and_exact_code_round_trip(network, side, channels, latent):
    model = _model(network, channels).eval()
    x = torch.rand(2, channels, side, side)
    enc = model.encode(x)
    assert enc["z_e"].shape == (2, 16, latent, latent) and enc["indices"].shape == (2, latent, latent)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and float(recon.min()) >= 0 and float(recon.max()) <= 1  # sigmoid output
    torch.testing.assert_close(model.decode_indices(enc["indices"]), recon)
    assert IMAGE_NETWORKS.get(network).downsampling == side // latent


def _count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize(
    ("network", "enc_res", "dec_res", "bn_after_conv3"),
    [("sqvae_cifar", 6, 6, False), ("sqvae_cifar_official", 2, 2, True), ("sqvae_celeba_official", 6, 5, False)],
)
def test_cifar_celeba_networks_paper_and_official(network, enc_res, dec_res, bn_after_conv3):
    model = _model(network, channels=3)
    assert (_count(model.encoder, ResBlock), _count(model.decoder, ResBlock)) == (enc_res, dec_res)
    layers = list(model.encoder)
    conv3 = next(i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert isinstance(layers[conv3 + 1], torch.nn.BatchNorm2d) == bn_after_conv3


@pytest.mark.parametrize(("quantizer", "extra"), [("sq_gauss2", 1), ("sq_gauss3", 1), ("sq_gauss4", 16)])
def test_official_variance_head_is_its_own_resblock(quantizer, extra):
    torch.manual_seed(0)
    q = build_quantizer(quantizer, num_codes=8, code_dim=16, variance_form="additive")
    model = ImageVQVAE(q, LIKELIHOODS.get("gaussian_closed_form")(), "sqvae_mnist", 1, None, width=16, variance_head="resblock").eval()
    enc = model.encoder
    assert isinstance(enc, VarianceBranchEncoder)
    # sqvae_mnist has 2 encoder ResBlocks: one in the trunk, the last is the mean head; the variance head is a third
    assert (_count(enc.trunk, ResBlock), _count(enc.mean_head, ResBlock), _count(enc.variance_head, ResBlock)) == (1, 1, 1)
    assert isinstance(enc.variance_head[-1], ChannelMean) == (extra == 1)
    x = torch.rand(2, 1, 28, 28)
    z = enc(x)
    features = enc.trunk(x)
    assert z.shape == (2, 16 + extra, 7, 7)
    torch.testing.assert_close(z[:, :16], enc.mean_head(features))
    head = enc.variance_head[0](features)  # the ResBlock's d_b channels
    torch.testing.assert_close(z[:, 16:], head.mean(1, keepdim=True) if extra == 1 else head)


def test_variance_head_resblock_is_for_the_gaussian_sq_family():
    lik = LIKELIHOODS.get("gaussian_closed_form")()
    plain = ImageVQVAE(build_quantizer("sq_gauss1", num_codes=8, code_dim=16), lik, "sqvae_mnist", width=16, variance_head="resblock")
    assert isinstance(plain.encoder, torch.nn.Sequential)  # (I): no variance channels, nothing to branch
    with pytest.raises(ValueError, match="variance_head=resblock is the SQ-VAE image code's variance branch"):
        ImageVQVAE(build_quantizer("gmvq", num_codes=8, code_dim=16), lik, "sqvae_mnist", width=16, variance_head="resblock")
    with pytest.raises(ValueError, match="needs a network whose encoder ends in ResBlocks"):
        ImageVQVAE(build_quantizer("sq_gauss3", num_codes=8, code_dim=16), lik, "sqvae_two_layer", width=16, variance_head="resblock")
    with pytest.raises(ValueError, match="unknown variance_head 'conv'"):
        ImageVQVAE(build_quantizer("sq_gauss3", num_codes=8, code_dim=16), lik, "sqvae_mnist", width=16, variance_head="conv")


def test_mean_commitment_must_match_the_models_data_dimensions_per_position():
    lik = LIKELIHOODS.get("gaussian_fixed")(sigma2=0.5)
    q = build_quantizer("vq_ema", num_codes=8, code_dim=16, commitment_reduction="mean", data_dims_per_position=48)
    ImageVQVAE(q, lik, "sqvae_cifar", channels=3, width=16)  # 3 x 4 x 4 = 48
    with pytest.raises(ValueError, match=r"data_dims_per_position=48, but this model has 16 .* set quantizer.options.data_dims_per_position=16"):
        ImageVQVAE(q, lik, "sqvae_mnist", channels=1, width=16)


def test_resblock_is_the_identity_when_its_last_batchnorm_is_zero():
    block = ResBlock(8).eval()
    x = torch.randn(2, 8, 5, 5)
    assert not torch.allclose(block(x), x)
    torch.nn.init.zeros_(block.body[-1].weight)
    torch.nn.init.zeros_(block.body[-1].bias)
    torch.testing.assert_close(block(x), x)


def test_loss_is_likelihood_plus_quantizer_loss():
    torch.manual_seed(0)
    model = _model()
    x = torch.rand(4, 1, 28, 28)
    out = model({"images": x}, StepContext())
    torch.testing.assert_close(out.loss, out.metrics["nll"] + out.metrics["latent_loss"])
    torch.testing.assert_close(sum(out.terms.values()), out.loss)
    out.loss.backward()
    assert model.encoder[0].weight.grad is not None and model.quantizer.codebook.grad is not None


@pytest.mark.parametrize("decoder", ["vmf", "categorical"])
def test_categorical_models_train_kappa_and_decode_ids(decoder):
    likelihood = LIKELIHOODS.get("vmf")(19, "one_hot") if decoder == "vmf" else LIKELIHOODS.get("categorical")(19)
    model = _model("sqvae_celebamask", 1, 19, likelihood, quantizer="sq_vmf")
    ids = torch.randint(0, 19, (2, 64, 64))
    out = model({"images": ids}, StepContext())
    out.loss.backward()
    assert out.outputs["reconstruction"].shape == (2, 64, 64) and out.outputs["reconstruction"].dtype == torch.long
    assert 0 <= float(out.metrics["pixel_error"]) <= 1
    if decoder == "vmf":
        assert model.likelihood.log_kappa.grad is not None and "kappa" in out.metrics
        assert model.encoder[0].in_channels == 19  # the encoder sees the data on S^18


def test_bad_images_are_clear_errors():
    model = _model()
    with pytest.raises(ImageInputError, match="built for 1 channel"):
        model({"images": torch.rand(2, 3, 28, 28)})
    with pytest.raises(ImageInputError, match="divisible"):
        model({"images": torch.rand(2, 1, 30, 30)})
    with pytest.raises(ImageInputError, match="continuous images must be"):
        model({"images": torch.randint(0, 255, (2, 28, 28))})
    with pytest.raises(ImageInputError, match="NaN"):
        model({"images": torch.full((2, 1, 28, 28), float("nan"))})
    cat = _model("sqvae_mnist", 1, 17, LIKELIHOODS.get("categorical")(17))
    with pytest.raises(ImageInputError, match=r"category ids must lie in \[0, 17\)"):
        cat({"images": torch.full((2, 28, 28), 17)})
    with pytest.raises(ValueError, match="categorical pixels need a categorical likelihood"):
        _model("sqvae_mnist", 1, 17)
    with pytest.raises(ValueError, match="set num_categories"):
        _model("sqvae_mnist", 1, None, LIKELIHOODS.get("categorical")(17))
    with pytest.raises(ValueError, match="unknown image network 'resnet50'"):
        _model("resnet50")


def test_model_is_registered_and_built_from_a_config():
    cfg = {
        "model": {"name": "image_vqvae", "network": "sqvae_two_layer", "width": 32, "channels": 1, "num_categories": 256,
                  "likelihood": {"name": "gaussian_closed_form"}, "categorical_decoder": "vmf", "vmf_directions": "circle"},
        "quantizer": {"name": "sq_vmf", "num_codes": 16, "code_dim": 32, "options": {}},
    }  # fmt: skip
    assert "image_vqvae" in MODELS
    model = build_model(cfg)
    assert model.likelihood.sphere_dim == 2 and model.encoder[0].in_channels == 2  # grey levels on S^1
    cfg["model"]["categorical_decoder"] = "softmax"
    with pytest.raises(ValueError, match="unknown model.categorical_decoder"):
        build_model(cfg)


def test_tiny_model_learns_a_few_digits_through_the_shared_trainer(tmp_path):
    from speechsq.eval.image_metrics import evaluate_image_model
    from speechsq.training import build_run, compose_config, load_model

    cfg = compose_config([
        "experiment=images_digits", "quantizer=vq", "quantizer.num_codes=16", "quantizer.code_dim=16", "model.width=16",
        "data.limit=32", "data.batch_size=16", "training.steps=150", "training.lr=3e-3", "training.milestones=[]",
        "training.scheduler=multistep", "training.validation.every=0",  # 2 batches per epoch: no plateau, no validation
        "training.checkpoint_every=150", "training.log_every=50", "training.progress=false", f"exp_dir={tmp_path}",
    ])  # fmt: skip
    trainer = build_run(cfg)
    split = load_image_dataset("digits", "train", limit=32)
    before = evaluate_image_model(trainer.raw_model, split, device="cpu")
    result = trainer.fit()
    after = evaluate_image_model(trainer.raw_model, split, device="cpu")
    # predicting the mean image of the 32 digits: the trivial baseline a model must beat
    x = split.tensors(np.arange(32))["images"]
    mean_image_mse = float((x - x.mean(0, keepdim=True)).pow(2).mean()) * 1e3
    assert after.mse_x1e3 < 0.5 * mean_image_mse < before.mse_x1e3
    assert after.perplexity > 2 and result.step == 150

    model, saved = load_model(tmp_path / "checkpoints" / "last.pt")
    assert saved.model.channels == 1 and saved.model.num_categories is None  # filled from the data
    again = evaluate_image_model(model, split)
    assert again.mse_x1e3 == pytest.approx(after.mse_x1e3, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,args",
    [
        ("depthwise_blobs.py", ["--dims", "4,8", "--steps", "60", "--points", "800", "--repeats", "1", "--factors", "64"]),
        ("self_annealing.py", ["--steps", "40", "--points", "2", "--sigma2-q", "1"]),
    ],
)
def test_experiment_scripts_run_end_to_end(tmp_path, script, args):
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "images" / "local" / script
    done = subprocess.run([sys.executable, str(path), *args, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.glob("*.png")) and list(tmp_path.glob("*.json"))


def _layer_kinds(sequence):
    return [type(m).__name__ for m in sequence]


def test_edvae_network_follows_its_table_4():
    """EdVAE App. D.2 / Table 4 with n = 16: channel widths n, 2n, 4n; two res blocks per
    level; EncRes = 3 x (ReLU, Conv3), ReLU, Conv1; DecRes = ReLU, Conv1, 3 x (ReLU, Conv3)."""
    model = _model("edvae", channels=3)
    enc, dec = model.encoder, model.decoder
    assert _layer_kinds(enc) == ["Conv2d", "EncResBlock", "EncResBlock", "MaxPool2d", "EncResBlock", "EncResBlock",
                                 "MaxPool2d", "EncResBlock", "EncResBlock", "Conv2d"]  # fmt: skip
    assert _layer_kinds(dec) == ["DecResBlock", "DecResBlock", "Upsample", "DecResBlock", "DecResBlock", "Upsample",
                                 "DecResBlock", "DecResBlock", "ReLU", "Conv2d"]  # fmt: skip
    assert [enc[i].body[-1].out_channels for i in (1, 2, 4, 5, 7, 8)] == [16, 16, 32, 32, 64, 64]
    assert [dec[i].body[1].out_channels for i in (0, 1, 3, 4, 6, 7)] == [64, 64, 32, 32, 16, 16]
    assert _layer_kinds(enc[1].body) == ["ReLU", "Conv2d"] * 4 and enc[1].body[-1].kernel_size == (1, 1)
    assert [c.kernel_size for c in enc[1].body[1:6:2]] == [(3, 3)] * 3
    assert _layer_kinds(dec[0].body) == ["ReLU", "Conv2d"] * 4 and dec[0].body[1].kernel_size == (1, 1)
    assert [c.kernel_size for c in dec[0].body[3::2]] == [(3, 3)] * 3
    assert enc[0].kernel_size == (3, 3) and enc[0].padding == (1, 1) and enc[-1].kernel_size == (1, 1)
    assert enc[0].bias is not None


def test_two_layer_encoder_widths_are_half_then_full():
    """SQ-VAE App. D.3 / E.1.2: Conv4(d_b / 2), BN, ReLU, Conv4(d_b) (width 16 here)."""
    enc = _model("sqvae_mnist").encoder
    assert (enc[0].out_channels, enc[3].in_channels, enc[3].out_channels) == (8, 8, 16)


def test_vmf_latents_are_unit_vectors_along_the_channel_axis():
    torch.manual_seed(0)
    q = build_quantizer("vq", num_codes=8, code_dim=16)
    model = ImageVQVAE(q, LIKELIHOODS.get("gaussian_fixed")(sigma2=0.1), "sqvae_mnist", 1, None, width=16,
                       normalize_latent=True)  # fmt: skip
    z_e = model.encode(torch.rand(2, 1, 28, 28))["z_e"]
    assert z_e.shape == (2, 16, 7, 7)
    torch.testing.assert_close(z_e.norm(dim=1), torch.ones(2, 7, 7))
