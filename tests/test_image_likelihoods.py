"""Categorical and vMF decoder likelihoods against independent computations, and the image
metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, special

from speechsq.eval.image_metrics import (
    code_counts,
    confusion_matrix,
    mean_iou_percent,
    mse_x1e3,
    perplexity_from_counts,
    pixel_error_percent,
)
from speechsq.likelihoods import LIKELIHOODS
from speechsq.likelihoods.categorical import CategoricalLikelihood
from speechsq.likelihoods.vmf import VMFLikelihood, category_directions, log_bessel_iv, vmf_log_normalizer


# ----- the log-Bessel function and the vMF normaliser ------------------------------------------
@pytest.mark.parametrize("nu", [0.0, 0.5, 1.0, 8.5, 31.0])
def test_log_bessel_matches_scipy(nu):
    kappa = torch.tensor([1e-3, 0.1, 1.0, 7.5, 60.0, 600.0], dtype=torch.float64)
    expected = np.log(special.iv(nu, kappa.numpy()))  # finite for these arguments
    np.testing.assert_allclose(log_bessel_iv(nu, kappa).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_log_bessel_is_stable_where_iv_overflows_or_underflows():
    big = torch.tensor([5e3, 1e5], dtype=torch.float64)
    assert np.isinf(special.iv(0.5, big.numpy())).all()
    # large-argument asymptotics: I_nu(k) ~ e^k / sqrt(2 pi k)
    np.testing.assert_allclose(log_bessel_iv(0.5, big).numpy(), (big - 0.5 * torch.log(2 * math.pi * big)).numpy(), rtol=1e-6)
    tiny = torch.tensor([1e-200], dtype=torch.float64)
    # small-argument series: I_nu(k) ~ (k/2)^nu / Gamma(nu + 1)
    expected = 8.5 * math.log(1e-200 / 2) - math.lgamma(9.5)
    assert float(log_bessel_iv(8.5, tiny)) == pytest.approx(expected, rel=1e-12)


def test_log_bessel_gradient():
    kappa = torch.tensor([0.01, 0.7, 3.0, 40.0, 900.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: log_bessel_iv(8.5, k), (kappa,))
    with pytest.raises(ValueError, match="kappa > 0"):
        log_bessel_iv(1.0, torch.tensor([0.0]))


def test_vmf_normaliser_integrates_to_one():
    # F = 3: C_3(kappa) = kappa / (4 pi sinh kappa)
    for k in (0.3, 2.0, 25.0):
        kt = torch.tensor(k, dtype=torch.float64)
        assert float(vmf_log_normalizer(kt, 3)) == pytest.approx(math.log(k / (4 * math.pi * math.sinh(k))), rel=1e-10)
        # F = 2: the density C_2 exp(kappa cos t) integrates to one over the circle
        total, _ = integrate.quad(lambda t: math.exp(k * math.cos(t)), 0, 2 * math.pi)
        assert math.exp(float(vmf_log_normalizer(kt, 2))) * total == pytest.approx(1.0, rel=1e-9)


# ----- categorical -----------------------------------------------------------------------------
def test_categorical_nll_is_cross_entropy_with_mask():
    lik = CategoricalLikelihood(5)
    assert lik.out_channels(1) == 5 and lik.out_channels(3) == 15
    logits = torch.randn(4, 5, 6, 7)
    target = torch.randint(0, 5, (4, 1, 6, 7))
    out = lik.nll(logits, target)
    expected = F.cross_entropy(logits, target[:, 0], reduction="sum") / 4
    torch.testing.assert_close(out.loss, expected)
    wrong = (logits.argmax(1) != target[:, 0]).float().mean()
    torch.testing.assert_close(out.metrics["pixel_error"], wrong)
    mask = torch.zeros(4, 1, 6, 7, dtype=torch.bool)
    mask[:, :, :3] = True
    masked = lik.nll(logits, target, mask)
    torch.testing.assert_close(masked.loss, F.cross_entropy(logits[:, :, :3], target[:, 0, :3], reduction="sum") / 4)
    wrong_kept = (logits[:, :, :3].argmax(1) != target[:, 0, :3]).float().mean()  # over the valid pixels only
    torch.testing.assert_close(masked.metrics["pixel_error"], wrong_kept)
    assert torch.equal(lik.mean(logits), logits.argmax(1, keepdim=True))
    one_hot = lik.encoder_input(target)
    assert torch.equal(one_hot.argmax(1, keepdim=True), target) and torch.equal(one_hot.sum(1), torch.ones(4, 6, 7))


def test_categorical_channels_are_grouped_per_data_channel():
    lik = CategoricalLikelihood(3)
    logits = torch.randn(2, 6, 4, 4)  # two data channels of three categories each
    target = torch.randint(0, 3, (2, 2, 4, 4))
    expected = sum(F.cross_entropy(logits[:, 3 * c : 3 * c + 3], target[:, c], reduction="sum") for c in range(2)) / 2
    torch.testing.assert_close(lik.nll(logits, target).loss, expected)


def test_categorical_bad_input():
    lik = CategoricalLikelihood(4)
    with pytest.raises(ValueError, match=r"category ids must lie in \[0, 4\)"):
        lik.nll(torch.randn(1, 4, 2, 2), torch.full((1, 1, 2, 2), 4))
    with pytest.raises(ValueError, match="integer category ids"):
        lik.nll(torch.randn(1, 4, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="decoder output must be"):
        lik.nll(torch.randn(1, 3, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_categories"):
        CategoricalLikelihood(1)


# ----- vMF --------------------------------------------------------------------------------------
def test_category_directions():
    eye = category_directions(19, "one_hot")
    torch.testing.assert_close(eye @ eye.T, torch.eye(19))  # orthonormal on S^18
    circle = category_directions(256, "circle").double()
    torch.testing.assert_close(circle.norm(dim=1), torch.ones(256, dtype=torch.float64), rtol=0, atol=1e-6)
    angles = torch.atan2(circle[:, 1], circle[:, 0]) % (2 * math.pi)
    angles[-1] = math.pi  # atan2 of (-1, ~0) may land on -pi
    torch.testing.assert_close(angles, math.pi * torch.arange(1, 257, dtype=torch.float64) / 256, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown direction set"):
        category_directions(3, "sphere")


@pytest.mark.parametrize("num_categories,directions", [(19, "one_hot"), (256, "circle")])
def test_vmf_nll_and_softmax_match_direct_computation(num_categories, directions):
    lik = VMFLikelihood(num_categories, directions, init_kappa=3.7)
    f_dim = lik.sphere_dim
    decoder_out = torch.randn(3, f_dim, 5, 4)
    target = torch.randint(0, num_categories, (3, 1, 5, 4))
    out = lik.nll(decoder_out, target)

    w = category_directions(num_categories, directions).double()
    kappa = 3.7
    f = decoder_out.double() / decoder_out.double().norm(dim=1, keepdim=True)  # (B, F, H, W)
    v = w[target[:, 0]].permute(0, 3, 1, 2)
    d = target[0].numel()
    log_c = (f_dim / 2 - 1) * math.log(kappa) - math.log(special.iv(f_dim / 2 - 1, kappa)) - f_dim / 2 * math.log(2 * math.pi)
    expected = (-kappa * (f * v).sum(1).sum((1, 2)) - d * log_c).mean()
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(out.metrics["kappa"]) == pytest.approx(kappa, rel=1e-6)

    # eq. 10: P(v_d = w_c) = exp(kappa w_c.f_d) / sum_c' exp(kappa w_c'.f_d)
    scores = torch.exp(kappa * torch.einsum("cf,bfhw->bchw", w, f))
    direct = scores / scores.sum(1, keepdim=True)
    torch.testing.assert_close(lik.probs(decoder_out)[:, 0].double(), direct, rtol=1e-5, atol=1e-6)
    assert torch.equal(lik.mean(decoder_out)[:, 0], direct.argmax(1))
    encoded = lik.encoder_input(target)
    torch.testing.assert_close(encoded.double(), v.double())


def test_vmf_nll_and_pixel_error_count_only_valid_dimensions():
    lik = VMFLikelihood(19, "one_hot", init_kappa=2.5)
    decoder_out = torch.randn(2, 19, 4, 5)
    target = torch.randint(0, 19, (2, 1, 4, 5))
    mask = torch.zeros(2, 1, 4, 5, dtype=torch.bool)
    mask[0, :, :3] = True
    mask[1, :, :1, :2] = True  # 3 x 5 + 2 = 17 valid pixels
    out = lik.nll(decoder_out, target, mask)
    f = F.normalize(decoder_out.double(), dim=1)
    cos = (f * F.one_hot(target[:, 0], 19).permute(0, 3, 1, 2).double()).sum(1)[mask[:, 0]]
    log_c = 8.5 * math.log(2.5) - math.log(special.iv(8.5, 2.5)) - 9.5 * math.log(2 * math.pi)  # eq. 18, F = 19
    # per example (B = 2); the two terms nearly cancel here, so check each
    assert float(out.terms["recon"].detach()) == pytest.approx(float(-2.5 * cos.sum() / 2), rel=1e-5)
    assert float(out.terms["log_norm"].detach()) == pytest.approx(-17 * log_c / 2, rel=1e-4)  # log C cancels to 0.04: float32
    wrong = (decoder_out.argmax(1) != target[:, 0])[mask[:, 0]].double().mean()
    assert float(out.metrics["pixel_error"]) == pytest.approx(float(wrong), rel=1e-6)


def test_vmf_kappa_gradient_vanishes_at_the_maximum_likelihood_concentration():
    # d NLL / d kappa = -sum cos + D * A_F(kappa), A_F = I_{F/2} / I_{F/2-1}; zero where the
    # mean resultant length equals A_F(kappa)
    lik = VMFLikelihood(19, "one_hot", init_kappa=1.0)
    target = torch.randint(0, 19, (2, 1, 4, 4))
    decoder_out = 2 * F.one_hot(target[:, 0], 19).permute(0, 3, 1, 2) + torch.randn(2, 19, 4, 4)  # leaning to the truth
    f = F.normalize(decoder_out, dim=1)
    mean_cos = float((f * F.one_hot(target[:, 0], 19).permute(0, 3, 1, 2)).sum(1).mean())
    assert 0 < mean_cos < 1
    from scipy.optimize import brentq

    kappa_star = brentq(lambda k: special.ive(9.5, k) / special.ive(8.5, k) - mean_cos, 1e-6, 1e4)
    with torch.no_grad():
        lik.log_kappa.fill_(math.log(kappa_star))
    lik.nll(decoder_out, target).loss.backward()
    assert abs(float(lik.log_kappa.grad)) < 1e-3
    with torch.no_grad():
        lik.log_kappa.fill_(math.log(kappa_star * 2))
    lik.log_kappa.grad = None
    lik.nll(decoder_out, target).loss.backward()
    assert float(lik.log_kappa.grad) > 0  # too concentrated: the NLL pushes kappa down


def test_likelihoods_are_registered():
    assert {"categorical", "vmf"} <= set(LIKELIHOODS.names())
    assert LIKELIHOODS.get("vmf")(256, "circle").out_channels(1) == 2
    with pytest.raises(ValueError, match="init_kappa"):
        VMFLikelihood(19, init_kappa=0.0)
    fixed = VMFLikelihood(19, trainable=False)
    assert not any(p.requires_grad for p in fixed.parameters())


# ----- image metrics ----------------------------------------------------------------------------
def test_pixel_error_and_miou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    conf = confusion_matrix(pred, target, 4)  # class 3 never occurs
    assert pixel_error_percent(conf) == pytest.approx(100 * 2 / 8)
    # IoU: class 0: tp 2 (pos 0, 7), fp 1 (pos 6), fn 1 (pos 1) -> 2/4; class 1: tp 2, fp 1 -> 2/3;
    # class 2: tp 2, fn 1 -> 2/3; class 3 absent -> left out
    assert mean_iou_percent(conf) == pytest.approx(100 * (2 / 4 + 2 / 3 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="classes must lie"):
        confusion_matrix(pred, target, 2)


def test_perplexity_mse_and_code_counts():
    assert perplexity_from_counts(torch.tensor([5.0, 5.0, 5.0, 5.0])) == pytest.approx(4.0)
    p = np.array([0.5, 0.25, 0.25])
    assert perplexity_from_counts(torch.tensor([2.0, 1.0, 1.0, 0.0])) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    idx = torch.tensor([[[0, 1], [1, -1]]])
    torch.testing.assert_close(code_counts(idx, 3), torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64))
    grouped = torch.tensor([[[[0, 2], [1, 2]]]])  # (B, h, w, G)
    torch.testing.assert_close(code_counts(grouped, 3), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64))
    assert perplexity_from_counts(code_counts(grouped, 3)) == pytest.approx((2.0 + 1.0) / 2)
    a, b = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.1)
    assert mse_x1e3(a, b) == pytest.approx(10.0)
