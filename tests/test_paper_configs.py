"""The shipped configurations "as their authors trained them": each composes, builds, and
holds the values of its source (the numbers are restated here from the papers / official
files, so a changed config fails)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from speechsq.models.image import IMAGE_NETWORKS
from speechsq.models.speech import build_likelihood, build_quantizer_from_config
from speechsq.quantizers import kl_weight_from_paper
from speechsq.training.config import compose_config

CONF = Path(__file__).resolve().parents[1] / "speechsq" / "conf"


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "quantizer").glob("*.yaml")))
def test_every_quantizer_config_composes_and_builds(name):
    cfg = compose_config([f"quantizer={name}", "data.feats_dir=unused"])
    q = build_quantizer_from_config(cfg.quantizer)
    assert q.registry_name == cfg.quantizer.name
    build_likelihood(cfg.quantizer.likelihood)


def test_vq_ema_zerospeech_is_van_niekerk_et_al():
    cfg = compose_config(["quantizer=vq_ema_zerospeech", "data.feats_dir=unused"])
    q = build_quantizer_from_config(cfg.quantizer)
    assert (q.num_codes, q.code_dim) == (512, 64)
    assert (q.beta, q.decay, q.eps, q.update_rule) == (0.25, 0.999, 1e-5, "all")
    assert q.commitment_weight == 0.25 * 80 * 2 / 64  # F.mse_loss next to a mean reconstruction
    assert cfg.preprocessing.n_mels * 2 == q.data_dims_per_position
    bound = 1.0 / 512  # U(-1/512, 1/512)
    assert q.codebook.abs().max() <= bound and q.codebook.abs().max() > 0.9 * bound


@pytest.mark.parametrize("sigma2", [1e-2, 1e-1, 1.0, 10.0])
def test_table9_sigma2_grid_is_selectable_and_gives_the_gaussian_nll(sigma2):
    cfg = compose_config(["quantizer=vq_ema_zerospeech", f"quantizer.likelihood.sigma2={sigma2}", "data.feats_dir=unused"])
    lik = build_likelihood(cfg.model.likelihood)  # the model's likelihood follows the quantizer's
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(2, 80, 32, generator=g), torch.randn(2, 80, 32, generator=g)
    out = lik.nll(x_hat, x)
    sse = (x - x_hat).pow(2).sum()
    # ||x - x_hat||^2 / (2 sigma^2) + D/2 log sigma^2 per example (Eloff et al.; SQ-VAE Sec. 5.1)
    torch.testing.assert_close(out.terms["recon"], sse / (2 * sigma2) / 2)
    torch.testing.assert_close(out.loss, sse / (2 * sigma2) / 2 + 80 * 32 / 2 * math.log(sigma2))
    logp = torch.distributions.Normal(x_hat, math.sqrt(sigma2)).log_prob(x).sum() / 2
    torch.testing.assert_close(out.loss, -logp - 80 * 32 / 2 * math.log(2 * math.pi))


@pytest.mark.parametrize("name", ["vq_ema_sqvae_images", "vq_ema_reset_sqvae_images"])
def test_sqvae_image_vq_baselines(name):
    cfg = compose_config(["experiment=images_cifar10", f"quantizer={name}", "data.root=unused"])
    q = build_quantizer_from_config(cfg.quantizer)
    assert (q.beta, q.decay, q.update_rule, q.commitment_weight) == (0.25, 0.99, "all", 0.25)  # SQ-VAE App. E
    if name.startswith("vq_ema_reset"):
        assert (q.reset_every, q.reset_threshold, q.reset_std ** 2) == (20, 0.03, pytest.approx(0.01))  # App. E.1.2


def test_soft_vq_config_is_the_papers_objective():
    q = build_quantizer_from_config(compose_config(["quantizer=soft_vq", "data.feats_dir=unused"]).quantizer)
    assert (q.variance, q.estimator, q.noise_std) == ("per_input", "straight_through", 0.0)
    q = build_quantizer_from_config(compose_config(["quantizer=soft_vq_posterior_mean", "data.feats_dir=unused"]).quantizer)
    assert (q.variance, q.estimator, q.noise_std) == ("per_code", "posterior_mean", 0.1)


# EdVAE App. D: the KL weight upper bounds, and the images each dataset has
EDVAE_WEIGHTS = {
    ("cifar10", "edvae"): 5e-7,
    ("celeba", "edvae"): 1e-7,
    ("cifar10", "dvae"): 5e-5,
    ("celeba", "dvae"): 5e-5,
    ("cifar10", "gsvq"): 5e-6,
    ("celeba", "gsvq"): 5e-6,
}
IMAGE_SHAPES = {"cifar10": (3, 32, 32), "celeba": (3, 64, 64)}


@pytest.mark.parametrize(("dataset", "model"), sorted(EDVAE_WEIGHTS))
def test_edvae_paper_configs_carry_the_converted_kl_weights(dataset, model):
    cfg = compose_config([f"experiment=images_{dataset}_{model}", "data.root=unused"])
    c, h, w = IMAGE_SHAPES[dataset]
    factor = IMAGE_NETWORKS.get(cfg.model.network).downsampling
    expected = kl_weight_from_paper(EDVAE_WEIGHTS[dataset, model], "mean", data_dims=c * h * w, latent_positions=(h // factor) * (w // factor))
    assert cfg.quantizer.options.beta == pytest.approx(expected, rel=1e-12)
    assert cfg.quantizer.likelihood.name == "gaussian_fixed" and cfg.quantizer.likelihood.sigma2 == 0.5
    assert (cfg.quantizer.num_codes, cfg.quantizer.code_dim, cfg.model.width) == (512, 16, 128)  # App. D.2
    assert (cfg.data.batch_size, cfg.training.steps, cfg.training.lr) == (128, 150000, 1e-3)  # App. D
    assert cfg.quantizer.kl_warmup.schedule == "cosine" and cfg.quantizer.kl_warmup.steps == 5000
    assert cfg.quantizer.name == {"edvae": "edvae", "dvae": "dvae", "gsvq": "gumbel_vq"}[model]
    assert cfg.model.output_activation == "none"
    build_quantizer_from_config(cfg.quantizer)


# sony/sqvae vision/configs/*.yaml: size_dict, log_param_q_init, and the network each names
OFFICIAL = {
    "mnist": (128, math.log(10.0), "sqvae_mnist"),  # mnist_gauss_1.yaml, num_rb 2
    "fashion_mnist": (256, math.log(10.0), "sqvae_mnist"),  # fashion-mnist_gauss_1.yaml, num_rb 2
    "cifar10": (512, math.log(20.0), "sqvae_cifar_official"),  # cifar10_gauss_1.yaml, net_32.py
    "celeba": (512, math.log(20.0), "sqvae_celeba_official"),  # celeba_gauss_*.yaml, net_64.py
}


@pytest.mark.parametrize("dataset", sorted(OFFICIAL))
def test_official_image_configs_follow_the_released_code(dataset):
    num_codes, log_s, network = OFFICIAL[dataset]
    cfg = compose_config([f"experiment=images_{dataset}_official", "data.root=unused"])
    q = build_quantizer_from_config(cfg.quantizer)
    assert (q.registry_name, q.num_codes, q.code_dim, q.variance_form) == ("sq_gauss1", num_codes, 64, "additive")
    assert q.log_sigma2.item() == pytest.approx(log_s, rel=1e-7)
    assert (cfg.model.network, cfg.model.variance_head) == (network, "resblock")
    # sigma_phi^2 = e^0 + e^s for (I): 11 (log 10) or 21 (log 20) at the start
    out = q.eval()(torch.randn(1, 3, 64))
    assert out.metrics["sigma2_phi"].item() == pytest.approx(1.0 + math.exp(log_s), rel=1e-6)


def test_official_celeba_keeps_its_values_for_every_gaussian_sq_type():
    cfg = compose_config(["experiment=images_celeba_official", "quantizer=sq_gauss3", "data.root=unused"])
    q = build_quantizer_from_config(cfg.quantizer)
    assert (q.registry_name, q.variance_form) == ("sq_gauss3", "additive")
    assert q.log_sigma2.item() == pytest.approx(math.log(20.0), rel=1e-7)
    from speechsq.models import build_model

    cfg.model.channels = 3
    model = build_model(cfg)
    assert model.encoder(torch.rand(2, 3, 64, 64)).shape == (2, 65, 16, 16)  # mean + one log-variance channel


def test_official_celebamask_config():
    cfg = compose_config(["experiment=images_celebamask_official", "data.root=unused"])
    q = build_quantizer_from_config(cfg.quantizer)
    assert (q.registry_name, q.num_codes, q.code_dim) == ("sq_vmf", 64, 64)
    assert q.kappa_phi.item() == pytest.approx(1.05)  # log_param_q_init = log 0.05
    assert cfg.model.vmf_init_kappa == 100.0  # log_kappa_inv = log 0.01
    assert cfg.data.options.partition == "folders"


def test_vq_ema_zerospeech_with_dimension_normalisation_is_the_reference_loss():
    """bshall/ZeroSpeech + Eloff et al.: F.mse_loss(x_hat, x) / (2 s2) + 0.25 F.mse_loss(z, sg[z_q]);
    speechsq's speech model with model.loss_normalization=dimension gives these values term by term."""
    import torch.nn.functional as F

    from speechsq.models import build_model

    cfg = compose_config([
        "quantizer=vq_ema_zerospeech", "quantizer.likelihood.sigma2=0.1", "model.loss_normalization=dimension",
        "data.feats_dir=unused", "model.encoder_channels=16", "model.decoder_hidden=8", "model.decoder_layers=1",
        "model.jitter=0", "quantizer.num_codes=8",
    ])  # fmt: skip
    cfg.model.n_speakers = 2
    torch.manual_seed(0)
    model = build_model(cfg).train()
    feats = torch.randn(3, 80, 34)  # 32 frames + one context frame each side
    speaker = torch.tensor([0, 1, 0])
    codebook = model.quantizer.codebook.clone()  # the EMA step of the forward moves it
    out = model({"feats": feats, "speaker": speaker})
    z_e = model.encoder(feats)[0].detach()  # BatchNorm in training mode: the same batch statistics
    z_q = codebook[torch.cdist(z_e.reshape(-1, 64), codebook).argmin(-1)].reshape(z_e.shape)
    target = feats[:, :, 1:-1]
    torch.testing.assert_close(out.terms["latent/commitment"], 0.25 * F.mse_loss(z_e, z_q))
    torch.testing.assert_close(out.terms["nll/recon"], F.mse_loss(out.outputs["reconstruction"], target) / (2 * 0.1))
    torch.testing.assert_close(out.terms["nll/log_norm"], torch.tensor(0.5 * math.log(0.1)))
