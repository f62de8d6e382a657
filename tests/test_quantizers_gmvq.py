"""`gmvq` / `gmvq_entropy`: eq. (15)-(18) posteriors and variances, the ALBO's aggregated KL."""

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from speechsq.quantizers import QuantizerInputError, StepContext, build_quantizer

K, D = 5, 3


def make(name="gmvq", **options):
    options.setdefault("init", "normal")  # k-means has its own test
    return build_quantizer(name, num_codes=K, code_dim=D, **options)


def direct_posterior(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """eq. (15)-(17) by broadcasting: softmax_c(-1/2 sum_i softplus(r_i) (z_i - mu_ci)^2)."""
    z_hat, raw = rows[:, :D], rows[:, D:]
    w = torch.nn.functional.softplus(raw)
    logits = -0.5 * (w[:, None, :] * (z_hat[:, None, :] - codebook[None]) ** 2).sum(-1)
    return torch.softmax(logits, -1)


def test_encoder_emits_latent_and_weights():
    q = make()
    assert q.input_dim == 2 * D
    with pytest.raises(QuantizerInputError, match=f"expects {2 * D} latent channels"):
        q(torch.randn(1, 4, D))


def test_posterior_is_softmax_of_weighted_mahalanobis_logits():
    q = make().eval()
    rows = 2 * torch.randn(40, 2 * D)
    flat = q.quantize_flat(rows, StepContext())
    assert torch.allclose(flat.probs, direct_posterior(rows, q.codebook.detach()), atol=1e-5)


def test_aggregated_posterior_kl_matches_direct_and_torch_distributions():
    gamma, beta, kl_weight = 0.7, 1.3, 0.5
    q = make(gamma=gamma, beta=beta).eval()
    z = 2 * torch.randn(4, 6, 2 * D)
    out = q(z, ctx=StepContext(kl_weight=kl_weight))
    probs = direct_posterior(z.reshape(-1, 2 * D), q.codebook.detach())
    q_b = probs.mean(0)  # eq. (12)
    direct = (q_b * torch.log(q_b * K)).sum()
    by_torch = kl_divergence(Categorical(probs=q_b), Categorical(probs=torch.full((K,), 1.0 / K)))
    assert torch.allclose(direct, by_torch, atol=1e-6)
    assert torch.allclose(out.metrics["kl_aggregate"], direct, atol=1e-5)
    n_rows, batch = 24, 4  # every position carries the aggregate KL; per-example convention
    assert torch.allclose(out.terms["kl"], gamma * beta * kl_weight * n_rows * direct / batch, atol=1e-5)
    # the aggregate KL is not the mean of per-row KLs: confident but diverse rows have a low one
    per_row = kl_divergence(Categorical(probs=probs), Categorical(probs=torch.full((K,), 1.0 / K))).mean()
    assert direct <= per_row + 1e-6


def test_aggregate_kl_ignores_masked_positions():
    q = make().eval()
    z = torch.randn(2, 5, 2 * D)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    masked = q(z, mask)
    garbage = z.clone()
    garbage[0, 3:] = 100.0
    assert torch.allclose(q(garbage, mask).terms["kl"], masked.terms["kl"])
    probs = direct_posterior(z[mask], q.codebook.detach())
    q_b = probs.mean(0)
    assert torch.allclose(masked.metrics["kl_aggregate"], (q_b * torch.log(q_b * K)).sum(), atol=1e-5)


def test_latent_term_and_sigma_follow_eq_18():
    gamma, sigma2 = 2.0, 0.8
    q = make(gamma=gamma, sigma2=sigma2).eval()
    z = torch.randn(3, 7, 2 * D)
    out = q(z)
    z_hat = z[..., :D]
    mu = q.codebook.detach()[out.indices]
    sigma2_c = (z_hat - mu).pow(2).sum(-1) / D / (2 * sigma2)  # eq. (18)
    assert torch.allclose(out.metrics["sigma2_c"], sigma2_c.mean(), atol=1e-5)
    # E_eps ||z - mu_c||^2 = L sigma_c^2, summed over positions, per example
    assert torch.allclose(out.terms["latent"], gamma * D * sigma2_c.sum() / 3, atol=1e-4)


def test_training_latent_is_codeword_plus_scaled_standard_noise():
    q = make()
    n = 200
    z = torch.randn(1, n, 2 * D)
    torch.manual_seed(11)
    out = q(z, ctx=StepContext(temperature=0.5))
    # the same draws in the same order: Gumbel noise U(0, 1) for the (n, K) logits, then eps ~ N(0, I)
    torch.manual_seed(11)
    torch.rand(n, K)
    eps = torch.randn(n, D)
    mu = q.codebook.detach()[out.indices[0]]
    sigma = ((z[0, :, :D] - mu).pow(2).sum(-1) / D / (2 * q.sigma2)).sqrt()  # eq. (18)
    torch.testing.assert_close(out.z_q[0].detach(), mu + sigma[:, None] * eps)
    # and no noise at evaluation: the codeword itself
    q.eval()
    ev = q(z)
    assert torch.equal(ev.z_q, q.codebook.detach()[ev.indices])
    assert torch.equal(q.decode(q.encode(z)), ev.z_q)


def test_training_codes_are_gumbel_draws_from_the_posterior():
    q = make()
    row = torch.randn(1, 2 * D)
    probs = direct_posterior(row, q.codebook.detach())[0]
    out = q(row.expand(1, 40000, 2 * D).contiguous(), ctx=StepContext(temperature=1.0))
    freq = torch.bincount(out.indices.reshape(-1), minlength=K).float() / 40000
    assert torch.allclose(freq, probs, atol=0.01)


@pytest.mark.parametrize("term", ["latent", "kl", "decoder"])
def test_every_part_of_the_objective_trains_the_codebook(term):
    q = make()
    z = torch.randn(2, 8, 2 * D, requires_grad=True)
    out = q(z, ctx=StepContext(temperature=0.8))
    target = out.z_q.pow(2).sum() if term == "decoder" else out.terms[term]
    target.backward()
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0


def test_kl_gradient_reaches_codes_the_batch_does_not_pick():
    """Through the softmax every code's mean moves: the aggregate KL spreads usage."""
    q = make()
    z = torch.randn(1, 30, 2 * D)
    out = q(z)
    out.terms["kl"].backward()
    assert (q.codebook.grad.abs().sum(-1) > 0).all()


def test_kmeans_initialisation_runs_on_the_first_training_batch_only():
    q = build_quantizer("gmvq", num_codes=K, code_dim=D)  # paper default: k-means
    centres = 10 * torch.randn(K, D)
    z_hat = centres.repeat(40, 1) + 0.01 * torch.randn(40 * K, D)
    z = torch.cat([z_hat, torch.zeros_like(z_hat)], -1)[None]
    q.eval()
    before = q.codebook.detach().clone()
    q(z)
    assert torch.equal(q.codebook.detach(), before)  # no initialisation from eval batches
    q.train()
    q(z)
    nearest = torch.cdist(q.codebook.detach(), centres).min(-1).values
    assert (nearest < 0.1).sum() >= K - 1  # Lloyd from random rows: at most one cluster shared
    after_first = q.codebook.detach().clone()
    q(z + 5.0)
    assert torch.equal(q.codebook.detach(), after_first)


def test_entropy_variant_scales_only_the_kl():
    base = make()
    torch.manual_seed(1)
    entropy = make("gmvq_entropy")
    entropy.load_state_dict(base.state_dict())
    assert entropy.beta == 5.0 and base.beta == 1.0  # the documented defaults (the paper gives no value)
    z = torch.randn(2, 6, 2 * D)
    a, b = base.eval()(z), entropy.eval()(z)
    assert torch.allclose(b.terms["kl"], entropy.beta / base.beta * a.terms["kl"])
    assert torch.equal(a.terms["latent"], b.terms["latent"])
    with pytest.raises(QuantizerInputError, match="beta > 1"):
        make("gmvq_entropy", beta=1.0)


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(QuantizerInputError, match="sigma2"):
        make(sigma2=0.0)
    with pytest.raises(QuantizerInputError, match="gamma"):
        make(gamma=-1.0)
    with pytest.raises(QuantizerInputError, match="unknown codebook init"):
        make(init="zeros")


def test_uniform_posterior_has_zero_kl_and_one_hot_batch_has_log_k():
    q = make().eval()
    with torch.no_grad():
        q.codebook.copy_(10 * torch.randn(K, D))
    # all positions on the same codeword, sharp weights: q_B is one-hot, KL = log K
    row = torch.cat([q.codebook[0].detach(), torch.full((D,), 30.0)])
    out = q(row.expand(1, 4, 2 * D).contiguous())
    assert torch.allclose(out.metrics["kl_aggregate"], torch.tensor(math.log(K)), atol=1e-4)
    # zero weights (softplus(-inf) -> 0): every logit is 0, q(c|x) uniform, KL = 0
    flat = torch.cat([torch.randn(4, D), torch.full((4, D), -100.0)], -1)[None]
    assert q(flat).metrics["kl_aggregate"].abs() < 1e-6
