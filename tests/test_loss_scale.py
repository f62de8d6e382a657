"""Papers' KL weights in speechsq's per-example sums (speechsq/quantizers/loss_scale.py).

The conversion is checked twice: by exact numbers for the weights EdVAE App. D reports, and
by computing a paper's loss with its own reduction (torch.mean reconstruction, KL averaged
over positions, KL from torch.distributions) and speechsq's loss for the same tensors: they
must differ by exactly the constant data_dims / (2 sigma^2).
"""

from __future__ import annotations


import pytest
import torch
from torch.distributions import Categorical, Dirichlet, kl_divergence

from speechsq.likelihoods.gaussian import FixedVarianceGaussian
from speechsq.quantizers import QuantizerInputError, StepContext, build_quantizer, commitment_weight, kl_weight_from_paper


@pytest.mark.parametrize(
    ("paper_weight", "dims", "positions", "expected"),
    [
        (5e-7, 3 * 32 * 32, 8 * 8, 2.4e-5),  # EdVAE, CIFAR10
        (1e-7, 3 * 64 * 64, 16 * 16, 4.8e-6),  # EdVAE, CelebA 64x64
        (5e-5, 3 * 32 * 32, 8 * 8, 2.4e-3),  # dVAE
        (5e-6, 3 * 64 * 64, 16 * 16, 2.4e-4),  # GS-VQ-VAE
        (1e-7, 3 * 128 * 128, 32 * 32, 4.8e-6),  # EdVAE, LSUN Church 128x128
        (1.0, 1 * 28 * 28, 7 * 7, 16.0),  # a grey 28x28 image through a factor-4 encoder
    ],
)
def test_mean_reduced_weights_by_hand(paper_weight, dims, positions, expected):
    assert kl_weight_from_paper(paper_weight, "mean", data_dims=dims, latent_positions=positions) == pytest.approx(expected, rel=1e-12)


def test_sigma2_and_sum_reduction_by_hand():
    # sigma^2 = 0.1: the reconstruction is SSE / 0.2, five times the plain squared error
    assert kl_weight_from_paper(5e-7, "mean", 3072, 64, sigma2=0.1) == pytest.approx(5e-7 * 3072 / 64 * 5.0, rel=1e-12)
    assert kl_weight_from_paper(3e-3, "sum") == pytest.approx(3e-3, rel=1e-12)
    assert kl_weight_from_paper(3e-3, "sum", sigma2=2.0) == pytest.approx(3e-3 / 4.0, rel=1e-12)


def _paper_dirichlet_kl(logits):
    alpha = logits.clamp(max=20.0).exp() + 1.0  # EdVAE Alg. 1
    return kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones_like(alpha)))


def _paper_categorical_kl(logits):
    posterior = Categorical(logits=logits)
    return kl_divergence(posterior, Categorical(logits=torch.zeros_like(logits)))


@pytest.mark.parametrize(("name", "paper_kl"), [("edvae", _paper_dirichlet_kl), ("dvae", _paper_categorical_kl)])
def test_speechsq_loss_is_the_papers_loss_times_the_data_dimensions(name, paper_kl):
    b, c, side, k, d = 4, 3, 8, 12, 5  # images 3 x 8 x 8, latent 2 x 2 (factor 4)
    dims, positions, sigma2, w = c * side * side, (side // 4) ** 2, 0.5, 3e-3
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.rand(b, c, side, side, generator=g), torch.rand(b, c, side, side, generator=g)
    logits = 3.0 * torch.randn(b, k, side // 4, side // 4, generator=g, dtype=torch.float64).float()
    beta = kl_weight_from_paper(w, "mean", data_dims=dims, latent_positions=positions, sigma2=sigma2)
    q = build_quantizer(name, num_codes=k, code_dim=d, beta=beta).eval()
    out = q(logits, None, StepContext(kl_weight=1.0))
    speechsq = FixedVarianceGaussian(sigma2).nll(x_hat, x).terms["recon"] + out.terms["kl"]
    # the paper: torch.mean((x^ - x)**2) + w * KL(...).mean() over batch and positions
    kl = paper_kl(logits.double().permute(0, 2, 3, 1))
    paper = torch.mean((x_hat - x) ** 2).double() + w * kl.mean()
    assert speechsq.item() == pytest.approx(dims / (2 * sigma2) * paper.item(), rel=1e-5)


def test_gumbel_vq_loss_is_the_papers_loss_times_the_data_dimensions():
    b, d, k = 3, 4, 10
    dims, positions, w = 48, 4, 5e-6
    g = torch.Generator().manual_seed(1)
    z = torch.randn(b, d, 2, 2, generator=g)
    x, x_hat = torch.rand(b, dims, generator=g), torch.rand(b, dims, generator=g)
    q = build_quantizer("gumbel_vq", num_codes=k, code_dim=d, beta=kl_weight_from_paper(w, "mean", dims, positions)).eval()
    out = q(z)
    rows = z.permute(0, 2, 3, 1).reshape(-1, d)
    kl = _paper_categorical_kl(-torch.cdist(rows.double(), q.codebook.detach().double()).pow(2))
    paper = torch.mean((x_hat - x) ** 2).double() + w * kl.mean()
    speechsq = FixedVarianceGaussian(0.5).nll(x_hat, x).terms["recon"] + out.terms["kl"]
    assert speechsq.item() == pytest.approx(dims * paper.item(), rel=1e-5)


def test_commitment_weight_by_hand():
    assert commitment_weight(0.25, "mean", code_dim=64, data_dims_per_position=160) == 0.625
    assert commitment_weight(0.25, "mean", code_dim=64, data_dims_per_position=48) == 0.1875  # RGB, factor 4
    assert commitment_weight(0.25, "sum", code_dim=64) == 0.25


def test_bad_conversions_are_clear_errors():
    with pytest.raises(QuantizerInputError, match="data_dims must be > 0"):
        kl_weight_from_paper(1e-7, "mean", latent_positions=64)
    with pytest.raises(QuantizerInputError, match="latent_positions must be > 0"):
        kl_weight_from_paper(1e-7, "mean", data_dims=3072, latent_positions=0)
    with pytest.raises(QuantizerInputError, match="reduction must be one of"):
        kl_weight_from_paper(1e-7, "batchmean", 3072, 64)
    with pytest.raises(QuantizerInputError, match="sigma2 must be > 0"):
        kl_weight_from_paper(1e-7, "mean", 3072, 64, sigma2=0.0)
    with pytest.raises(QuantizerInputError, match="weight must be >= 0"):
        kl_weight_from_paper(-1.0, "sum")
    assert kl_weight_from_paper(0.0, "mean", 3072, 64) == 0.0
