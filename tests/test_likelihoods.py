"""Gaussian decoder likelihoods: closed forms against torch.distributions, masks, errors."""

import math

import pytest
import torch

from speechsq.likelihoods import LIKELIHOODS
from speechsq.likelihoods.gaussian import ClosedFormVarianceGaussian, FixedVarianceGaussian, TrainableVarianceGaussian


def _data(b=3, c=5, t=7):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, c, t, generator=g), torch.randn(b, c, t, generator=g)


def _torch_nll(x_hat, x, sigma2, mask=None):
    """-log N(x; x_hat, sigma2) summed over valid dims / B, without the D/2 log 2 pi constant."""
    logp = torch.distributions.Normal(x_hat, math.sqrt(sigma2)).log_prob(x) + 0.5 * math.log(2 * math.pi)
    if mask is not None:
        logp = logp * torch.broadcast_to(mask, logp.shape)
    return -logp.sum() / x.shape[0]


def test_registered_names():
    assert {"gaussian_trainable", "gaussian_closed_form", "gaussian_fixed"} <= set(LIKELIHOODS.names())


@pytest.mark.parametrize("sigma2", [1e-2, 1e-1, 1.0, 10.0])
def test_fixed_variance_matches_normal_log_prob(sigma2):
    x_hat, x = _data()
    out = FixedVarianceGaussian(sigma2).nll(x_hat, x)
    torch.testing.assert_close(out.loss, _torch_nll(x_hat, x, sigma2))
    torch.testing.assert_close(out.metrics["mse"], (x_hat - x).pow(2).mean())
    # the log-normaliser is a constant: only the squared error carries gradient
    x_hat.requires_grad_(True)
    FixedVarianceGaussian(sigma2).nll(x_hat, x).loss.backward()
    torch.testing.assert_close(x_hat.grad, (x_hat - x).detach() / sigma2 / x.shape[0])


def test_trainable_variance_is_eq8_and_its_optimum_is_the_mse():
    x_hat, x = _data()
    lik = TrainableVarianceGaussian(init_sigma2=0.3)
    out = lik.nll(x_hat, x)
    torch.testing.assert_close(out.loss, _torch_nll(x_hat, x, 0.3))
    assert set(out.terms) == {"recon", "log_norm"}
    torch.testing.assert_close(sum(out.terms.values()), out.loss)

    mse = (x_hat - x).pow(2).mean()
    with torch.no_grad():
        lik.log_sigma2.fill_(math.log(mse.item()))
    out = lik.nll(x_hat, x)
    out.loss.backward()
    assert abs(lik.log_sigma2.grad.item()) < 1e-4  # d/d log sigma^2 vanishes at sigma^2 = MSE


def test_closed_form_is_the_minimum_over_sigma2_and_has_the_same_gradient_there():
    x_hat, x = _data()
    closed = ClosedFormVarianceGaussian().nll(x_hat, x).loss
    d = x.numel() / x.shape[0]
    mse = (x_hat - x).pow(2).mean()
    torch.testing.assert_close(closed, 0.5 * d * (torch.log(mse) + 1))
    for sigma2 in [0.5 * mse.item(), mse.item(), 2 * mse.item(), 10.0]:
        trainable = TrainableVarianceGaussian(init_sigma2=sigma2).nll(x_hat, x).loss
        assert closed <= trainable + 1e-4
    # envelope theorem: the gradient w.r.t. the reconstruction equals eq. 8's at sigma^2 = MSE
    a = x_hat.clone().requires_grad_(True)
    ClosedFormVarianceGaussian().nll(a, x).loss.backward()
    b = x_hat.clone().requires_grad_(True)
    TrainableVarianceGaussian(init_sigma2=mse.item()).nll(b, x).loss.backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("name", ["gaussian_trainable", "gaussian_closed_form", "gaussian_fixed"])
def test_masked_positions_do_not_count(name):
    x_hat, x = _data(b=2, c=4, t=6)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])[:, None, :]
    lik = LIKELIHOODS.get(name)()
    ref = lik.nll(x_hat, x, mask)
    changed = x.clone()
    changed[1, :, 3:] = 1e6  # garbage in the padding
    out = lik.nll(x_hat, changed, mask)
    torch.testing.assert_close(out.loss, ref.loss)
    valid = (x_hat - x)[torch.broadcast_to(mask, x.shape)]
    torch.testing.assert_close(out.metrics["mse"], valid.pow(2).mean())
    if name == "gaussian_fixed":  # per example: the valid-dimension sum divided by B = 2
        torch.testing.assert_close(out.loss, _torch_nll(x_hat, x, 1.0, mask))


def test_bad_inputs_are_clear_errors():
    x_hat, x = _data()
    with pytest.raises(ValueError, match="same shape"):
        FixedVarianceGaussian().nll(x_hat[:, :, :-1], x)
    with pytest.raises(ValueError, match="no valid data dimension"):
        ClosedFormVarianceGaussian().nll(x_hat, x, torch.zeros(3, 1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="sigma2 must be > 0"):
        FixedVarianceGaussian(0.0)
    with pytest.raises(ValueError, match="init_sigma2 must be > 0"):
        TrainableVarianceGaussian(-1.0)
