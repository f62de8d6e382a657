"""Gaussian and vMF SQ-VAE quantizers (Takida et al. 2022): posteriors, losses, gradients, self-annealing."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from speechsq.quantizers import QuantizerInputError, StepContext, build_quantizer
from speechsq.quantizers.sq_gaussian import relaxed_posterior_code

K, D = 6, 3


def rows_for(q, n=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, q.code_dim, generator=g, dtype=dtype)
    extra = 0.5 * torch.randn(n, q.input_dim - q.code_dim, generator=g, dtype=dtype)
    return torch.cat([z, extra], 1)


# --------------------------------------------------------------------------------------
# eq. (7): the posterior is the Gaussian Bayes posterior under a uniform prior
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sq_gauss1", "sq_gauss3", "sq_gauss4", "sq_fixed"])
def test_gaussian_posterior_equals_bayes_rule(name):
    q = build_quantizer(name, num_codes=K, code_dim=D).double()
    with torch.no_grad():
        q.log_sigma2.fill_(math.log(0.7))
    rows = rows_for(q)
    z, extra = rows[:, :D], rows[:, D:]
    # Table 1: log sigma^2 = trainable offset + encoder channel(s)
    log_var = extra + math.log(0.7) if extra.shape[1] else torch.full((len(z), 1), math.log(0.7), dtype=z.dtype)
    std = log_var.exp().sqrt().expand_as(z)
    log_lik = torch.stack(
        [
            MultivariateNormal(q.codebook[k].detach(), scale_tril=torch.diag_embed(std)).log_prob(z)
            for k in range(K)
        ],
        -1,
    )
    # uniform prior P(z_q = b_k) = 1/K: posterior = softmax of the likelihoods
    expected = torch.log_softmax(log_lik, -1)
    got = torch.log_softmax(q.posterior_logits(rows).detach(), -1)
    assert torch.allclose(got, expected, atol=1e-10)


def test_gauss2_shares_one_variance_per_example_over_valid_positions():
    q = build_quantizer("sq_gauss2", num_codes=K, code_dim=D).double()
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 5, D + 1, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    shared = q._share_variance_within_examples(z, mask)
    for b in range(2):
        mean = z[b, mask[b], D].mean()
        assert torch.allclose(shared[b, :, D], mean.expand(5))
    assert torch.equal(shared[..., :D], z[..., :D])
    # per example: Normal(b_k, sigma_b^2 I) Bayes posterior
    rows = shared[mask]
    got = torch.log_softmax(q.posterior_logits(rows).detach(), -1)
    sigma = (rows[:, D:] + q.log_sigma2.detach()).exp().sqrt()
    log_lik = torch.stack([Normal(q.codebook[k].detach(), sigma).log_prob(rows[:, :D]).sum(-1) for k in range(K)], -1)
    assert torch.allclose(got, torch.log_softmax(log_lik, -1), atol=1e-10)


def test_vmf_posterior_is_softmax_of_kappa_times_cosine():
    q = build_quantizer("sq_vmf", num_codes=K, code_dim=D, kappa_init=4.0).double()
    rows = 3.0 * rows_for(q)
    cos = torch.nn.functional.cosine_similarity(rows[:, None, :], q.codebook.detach()[None], dim=-1)
    expected = torch.softmax(4.0 * cos, -1)
    got = torch.softmax(q.posterior_logits(rows).detach(), -1)
    assert q.kappa_phi.item() == pytest.approx(4.0)
    assert torch.allclose(got, expected, atol=1e-12)


# --------------------------------------------------------------------------------------
# the relaxed sample and its hand-written gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("block_rows", [None, 4, 1])
def test_relaxed_node_matches_plain_autograd_of_the_same_formulas(block_rows):
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(9, D + 1, generator=g, dtype=torch.float64, requires_grad=True)
    codes = torch.randn(K, D + 1, generator=g, dtype=torch.float64, requires_grad=True)
    mix = torch.randn(K, D, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(9, D, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    z_q, neg_entropy, idx, mass = relaxed_posterior_code(rows, codes, mix, 0.6, block_rows)
    ((z_q * upstream).sum() + 1.7 * neg_entropy).backward()
    fused = [t.grad.clone() for t in (rows, codes, mix)]
    for t in (rows, codes, mix):
        t.grad = None
    torch.manual_seed(1)  # same uniforms, drawn in the same order
    logits = rows @ codes.t()
    gumbel = -torch.log(-torch.log(torch.rand_like(logits)))
    w = torch.softmax((logits + gumbel) / 0.6, -1)
    log_p = torch.log_softmax(logits, -1)
    ref_neg_entropy = (log_p.exp() * log_p).sum()
    ((w @ mix * upstream).sum() + 1.7 * ref_neg_entropy).backward()
    assert torch.allclose(z_q, w @ mix) and torch.allclose(neg_entropy, ref_neg_entropy)
    assert torch.equal(idx, w.argmax(-1))
    assert torch.allclose(mass, log_p.exp().sum(0))
    for got, t in zip(fused, (rows, codes, mix)):
        assert torch.allclose(got, t.grad, atol=1e-12)


def test_gumbel_sample_becomes_one_hot_as_temperature_goes_to_zero():
    g = torch.Generator().manual_seed(0)
    rows, codes = torch.randn(200, D, generator=g), torch.randn(K, D, generator=g)
    mix = torch.eye(K)  # z_q = w itself
    gaps = []
    for tau in (2.0, 0.5, 0.1, 0.01, 1e-3):
        w, _, idx, _ = relaxed_posterior_code(rows, codes, mix, tau)
        one_hot = torch.nn.functional.one_hot(idx, K).float()
        gaps.append((w - one_hot).abs().sum(-1).mean().item())
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-3 and gaps[0] > 0.3


def test_sampled_codes_follow_the_posterior():
    """Gumbel-max: argmax(logits + g) ~ Categorical(softmax(logits))."""
    logits_row = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    codes = torch.cat([logits_row.t(), torch.zeros(4, 1)], 1)  # rows [1, *] @ codes^T = logits
    rows = torch.cat([torch.ones(20000, 1), torch.zeros(20000, 1)], 1)
    torch.manual_seed(3)
    _, _, idx, _ = relaxed_posterior_code(rows, codes, torch.eye(4), 1.0)
    freq = torch.bincount(idx, minlength=4).double() / len(idx)
    p = torch.softmax(logits_row[0].double(), -1)
    assert torch.all((freq - p).abs() < 4 * torch.sqrt(p * (1 - p) / len(idx)))


def test_bad_temperature_is_a_clear_error():
    q = build_quantizer("sq_gauss1", num_codes=K, code_dim=D).train()
    with pytest.raises(QuantizerInputError, match="temperature must be > 0"):
        q(torch.randn(1, 4, D), None, StepContext(temperature=0.0))


# --------------------------------------------------------------------------------------
# losses (eq. 8 / eq. 14) and gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sq_gauss1", "sq_gauss3", "sq_gauss4"])
def test_eval_loss_is_regulariser_minus_entropy_in_closed_form(name):
    q = build_quantizer(name, num_codes=K, code_dim=D).eval()  # the base always runs float32
    rows = rows_for(q, n=8, dtype=torch.float32)
    out = q(rows.reshape(2, 4, -1))
    idx = out.indices.reshape(-1)
    z = rows[:, :D]
    offset = q.log_sigma2.detach()
    var = (rows[:, D:] + offset).exp() if rows.shape[1] > D else offset.exp().reshape(1, 1)
    reg = (0.5 * (z - q.codebook.detach()[idx]).pow(2) / var).sum() / 2
    p = torch.softmax(q.posterior_logits(rows).detach(), -1)
    neg_h = (p * p.log()).sum() / 2
    assert torch.allclose(out.terms["regulariser"].detach(), reg, rtol=1e-5)
    assert torch.allclose(out.terms["neg_entropy"].detach(), neg_h, rtol=1e-5)
    assert out.metrics["entropy"].item() == pytest.approx(-(p * p.log()).sum(-1).mean().item(), rel=1e-5)
    assert out.metrics["sigma2_phi"].item() == pytest.approx(var.expand(8, -1).mean().item(), rel=1e-5)
    avg = p.mean(0)  # soft perplexity: exp H of the average posterior over the 8 positions
    assert out.metrics["soft_perplexity"].item() == pytest.approx(torch.exp(-(avg * avg.log()).sum()).item(), rel=1e-5)


def test_training_regulariser_is_eq8_of_the_relaxed_code_with_gradients_through_all_of_it():
    # R = sum_i ||z_i - w_i B||^2 / (2 sigma^2) with the Gumbel-softmax w from the same uniforms;
    # no stop-gradient anywhere: codebook, sigma^2 and encoder all get R's full gradient
    q = build_quantizer("sq_gauss1", num_codes=K, code_dim=D, log_sigma2_init=math.log(0.8)).train()
    rows = rows_for(q, n=8, dtype=torch.float32)
    z = rows.reshape(2, 4, D).clone().requires_grad_(True)
    torch.manual_seed(2)
    out = q(z, None, StepContext(temperature=0.6))
    out.terms["regulariser"].backward()
    book = q.codebook.detach().clone().requires_grad_(True)
    log_s2 = q.log_sigma2.detach().clone().requires_grad_(True)
    x = rows.clone().requires_grad_(True)
    logits = -0.5 * torch.cdist(x, book).pow(2) / log_s2.exp()  # eq. (7)
    torch.manual_seed(2)
    w = torch.softmax((logits - torch.log(-torch.log(torch.rand(8, K)))) / 0.6, -1)
    reg = 0.5 * (x - w @ book).pow(2).sum() / log_s2.exp() / 2  # per example: B = 2
    reg.backward()
    torch.testing.assert_close(out.terms["regulariser"].detach(), reg.detach())
    torch.testing.assert_close(q.codebook.grad, book.grad)
    torch.testing.assert_close(q.log_sigma2.grad, log_s2.grad)
    torch.testing.assert_close(z.grad.reshape(8, D), x.grad)


def test_variance_floor_is_1e_minus_10():
    # the precision is 1 / max(sigma^2, 1e-10), as in the reference code: exact above the floor, clamped below
    rows = rows_for(build_quantizer("sq_gauss1", num_codes=K, code_dim=D), n=4, dtype=torch.float32)
    for sigma2, used in ((1e-6, 1e-6), (1e-14, 1e-10)):
        q = build_quantizer("sq_gauss1", num_codes=K, code_dim=D, log_sigma2_init=math.log(sigma2)).eval()
        out = q(rows[None])
        sq = (rows - q.codebook.detach()[out.indices[0]]).pow(2).sum()
        assert out.terms["regulariser"].item() == pytest.approx(0.5 * sq.item() / used, rel=1e-4)


def test_vmf_default_kappa_is_the_released_configurations():
    # sony/sqvae: log_param_q_init = log 0.05, kappa_phi = 1 + exp(theta) = 1.05
    assert build_quantizer("sq_vmf", num_codes=K, code_dim=D).kappa_phi.item() == pytest.approx(1.05, rel=1e-6)


def test_vmf_eval_codes_are_unit_and_regulariser_is_kappa_one_minus_cosine():
    q = build_quantizer("sq_vmf", num_codes=K, code_dim=D, kappa_init=3.0).eval()
    rows = 2.0 * rows_for(q, n=8, dtype=torch.float32)
    out = q(rows.reshape(2, 4, D))
    z_q = out.z_q.reshape(-1, D)
    assert torch.allclose(z_q.norm(dim=-1), torch.ones(8))
    cos = torch.nn.functional.cosine_similarity(rows, z_q, dim=-1)
    assert torch.allclose(out.terms["regulariser"].detach(), 3.0 * (1 - cos).sum() / 2, rtol=1e-5)
    assert out.metrics["kappa_phi"].item() == pytest.approx(3.0)


def test_vmf_training_forward_uses_the_normalised_codebook():
    # issue 14: "the vMF codebook not normalised in the forward"
    q = build_quantizer("sq_vmf", num_codes=K, code_dim=D, kappa_init=5.0).train()
    with torch.no_grad():
        q.codebook.mul_(5.0)  # rows far from unit norm
    rows = rows_for(q, n=12, dtype=torch.float32)
    torch.manual_seed(0)
    out = q(rows.reshape(3, 4, D), None, StepContext(temperature=1e-4))  # one-hot relaxed samples
    z_q, idx = out.z_q.reshape(-1, D), out.indices.reshape(-1)
    unit_codes = torch.nn.functional.normalize(q.codebook.detach(), dim=-1)
    torch.testing.assert_close(z_q.detach(), unit_codes[idx])
    torch.testing.assert_close(z_q.detach().norm(dim=-1), torch.ones(12))
    cos = (torch.nn.functional.normalize(rows, dim=-1) * unit_codes[idx]).sum(-1)
    torch.testing.assert_close(out.terms["regulariser"].detach(), 5.0 * (1 - cos).sum() / 3)


def test_additive_variance_form_is_the_image_codes_sigma2():
    # sony/sqvae vision/model.py: param_q = exp(log_var_q) + exp(log_param_q_scalar), log_var_q = 0 for (I)
    q1 = build_quantizer("sq_gauss1", num_codes=K, code_dim=D, variance_form="additive", log_sigma2_init=math.log(20.0))
    out = q1.eval()(torch.randn(1, 5, D))
    assert out.metrics["sigma2_phi"].item() == pytest.approx(21.0, rel=1e-6)
    assert build_quantizer("sq_gauss1", num_codes=K, code_dim=D).variance_form == "scaled"
    q3 = build_quantizer("sq_gauss3", num_codes=K, code_dim=D, variance_form="additive", log_sigma2_init=math.log(20.0)).eval()
    rows = rows_for(q3, n=8, dtype=torch.float32)
    out = q3(rows.reshape(2, 4, -1))
    var = rows[:, D:].exp() + 20.0  # e^e + e^s per position
    idx = out.indices.reshape(-1)
    reg = (0.5 * (rows[:, :D] - q3.codebook.detach()[idx]).pow(2) / var).sum() / 2
    torch.testing.assert_close(out.terms["regulariser"].detach(), reg)
    assert out.metrics["sigma2_phi"].item() == pytest.approx(var.mean().item(), rel=1e-6)
    with pytest.raises(QuantizerInputError, match="unknown variance_form 'sum'"):
        build_quantizer("sq_gauss2", num_codes=K, code_dim=D, variance_form="sum")


@pytest.mark.parametrize("name", ["sq_gauss1", "sq_gauss2", "sq_gauss3", "sq_gauss4", "sq_vmf"])
def test_gradients_reach_codebook_variance_and_encoder_without_stop_gradient(name):
    q = build_quantizer(name, num_codes=K, code_dim=D).train()
    z = torch.randn(2, 5, q.input_dim, requires_grad=True)
    out = q(z, None, StepContext(temperature=0.8))
    # through the decoder input alone: every code gets a gradient via the soft one-hot
    (out.z_q * torch.randn_like(out.z_q)).sum().backward(retain_graph=False)
    assert torch.all(q.codebook.grad.abs().sum(-1) > 0)
    assert z.grad[..., : q.code_dim].abs().sum() > 0
    annealing = q.log_sigma2 if name.startswith("sq_gauss") else q.log_kappa_excess
    assert annealing.grad is not None and annealing.grad != 0
    if q.input_dim > q.code_dim:  # the encoder's variance channels are trained too
        assert z.grad[..., q.code_dim :].abs().sum() > 0


def test_fixed_variance_is_not_trained():
    q = build_quantizer("sq_fixed", num_codes=K, code_dim=D, sigma2=0.3)
    assert "log_sigma2" not in dict(q.named_parameters())
    out = q(torch.randn(1, 4, D), None, StepContext())
    assert out.metrics["sigma2_phi"].item() == pytest.approx(0.3)
    with pytest.raises(QuantizerInputError, match="sigma2 > 0"):
        build_quantizer("sq_fixed", num_codes=K, code_dim=D, sigma2=0.0)


def test_bad_options_are_clear_errors():
    with pytest.raises(QuantizerInputError, match="kappa_init"):
        build_quantizer("sq_vmf", num_codes=K, code_dim=D, kappa_init=0.5)
    with pytest.raises(QuantizerInputError, match="unknown codebook init"):
        build_quantizer("sq_gauss1", num_codes=K, code_dim=D, init="zeros")


def test_input_widths_follow_table_1():
    widths = {n: build_quantizer(n, num_codes=K, code_dim=64).input_dim for n in ("sq_gauss1", "sq_gauss2", "sq_gauss3", "sq_gauss4", "sq_fixed", "sq_vmf")}
    assert widths == {"sq_gauss1": 64, "sq_gauss2": 65, "sq_gauss3": 65, "sq_gauss4": 128, "sq_fixed": 64, "sq_vmf": 64}


# --------------------------------------------------------------------------------------
# self-annealing (Sec. 3.3, Fig. 2a): sigma_phi^2 falls as the decoder variance falls
# --------------------------------------------------------------------------------------
def test_sigma_phi_anneals_on_gaussian_blobs():
    torch.manual_seed(0)
    x_dim, n_blobs, code_dim = 8, 4, 4
    centres = 3.0 * torch.randn(n_blobs, x_dim)
    q = build_quantizer("sq_gauss1", num_codes=8, code_dim=code_dim)
    encoder, decoder = torch.nn.Linear(x_dim, code_dim), torch.nn.Linear(code_dim, x_dim)
    log_sigma2_x = torch.nn.Parameter(torch.tensor(0.0))  # decoder variance, trained (eq. 8)
    params = [*q.parameters(), *encoder.parameters(), *decoder.parameters(), log_sigma2_x]
    opt = torch.optim.Adam(params, lr=2e-2)
    sigma2_phi, sigma2_x = [], []
    for step in range(300):
        x = centres[torch.randint(n_blobs, (64,))] + 0.1 * torch.randn(64, x_dim)
        out = q(encoder(x)[:, None, :], None, StepContext(step=step, temperature=0.5))
        x_hat = decoder(out.z_q[:, 0])
        # Gaussian likelihood with trainable sigma^2, per example (eq. 8's first and last terms)
        nll = (x - x_hat).pow(2).sum(-1).mean() / (2 * log_sigma2_x.exp()) + x_dim / 2 * log_sigma2_x
        loss = nll + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sigma2_phi.append(out.metrics["sigma2_phi"].item())
        sigma2_x.append(log_sigma2_x.exp().item())
    assert sigma2_phi[0] == pytest.approx(10.0, rel=1e-3)  # log sigma_phi^2 initialised to log 10
    assert sigma2_phi[-1] < 0.25 * sigma2_phi[0]
    # still falling at the end, together with the decoder variance (Fig. 2a)
    assert sum(sigma2_phi[-50:]) < sum(sigma2_phi[-150:-100])
    assert sigma2_x[-1] < 0.75 * max(sigma2_x)
