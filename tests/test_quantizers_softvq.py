"""`soft_vq` (Wu & Flierl): Bayes posterior over codewords and its posterior-mean output."""

import pytest
import torch
from torch.distributions import Normal

from speechsq.quantizers import QuantizerInputError, build_quantizer

K, D = 6, 4


def make(**options):
    q = build_quantizer("soft_vq", num_codes=K, code_dim=D, **options)
    with torch.no_grad():  # distinct per-code variances, so the Gaussian normaliser matters
        q.codebook.copy_(torch.randn(K, D))
        q.log_variance.copy_(torch.linspace(-1.0, 1.5, K))
    return q


def bayes_posterior(rows: torch.Tensor, q) -> torch.Tensor:
    """p(e_k | z) = N(z; e_k, s_k^2 I) (1/K) / sum_j N(z; e_j, s_j^2 I) (1/K), directly."""
    std = q.log_variance.detach().exp().sqrt()
    log_lik = Normal(q.codebook.detach()[None], std[None, :, None]).log_prob(rows[:, None, :]).sum(-1)
    joint = log_lik + torch.log(torch.tensor(1.0 / K))
    return torch.exp(joint - torch.logsumexp(joint, -1, keepdim=True))


def test_training_output_is_the_bayes_posterior_mean():
    q = make(noise_std=0.0)  # without noise the input is the observation itself
    z = torch.randn(3, 9, D)
    out = q(z)
    post = bayes_posterior(z.reshape(-1, D), q)
    assert torch.allclose(out.z_q.reshape(-1, D), post @ q.codebook.detach(), atol=1e-5)
    assert torch.equal(out.indices.reshape(-1), post.argmax(-1))
    assert out.terms == {} and float(out.loss) == 0.0  # trained by reconstruction alone


def test_noise_is_added_in_training_only():
    q = make(noise_std=0.5)
    z = torch.randn(2, 7, D)
    first, second = q(z).z_q, q(z).z_q
    assert not torch.allclose(first, second)
    # the output is the posterior mean of *some* noisy latent: a convex combination of codewords
    post = bayes_posterior(z.reshape(-1, D), q)
    assert not torch.allclose(first.reshape(-1, D), post @ q.codebook.detach(), atol=1e-3)
    q.eval()
    assert torch.equal(q(z).z_q, q(z).z_q)


def test_noisy_training_output_is_the_posterior_mean_of_z_plus_scaled_standard_noise():
    # reproduces the one N(0, I) draw the quantizer makes (same seed, same shape)
    q = make(noise_std=0.3)
    z = torch.randn(4, 5, D)
    torch.manual_seed(123)
    out = q(z)
    torch.manual_seed(123)
    noisy = z.reshape(-1, D) + 0.3 * torch.randn(20, D)
    post = bayes_posterior(noisy, q)
    assert torch.allclose(out.z_q.reshape(-1, D), post @ q.codebook.detach(), atol=1e-5)
    assert torch.equal(out.indices.reshape(-1), post.argmax(-1))


def test_default_eval_returns_the_argmax_codeword_and_round_trips():
    q = make().eval()
    z = torch.randn(2, 8, D)
    out = q(z)
    post = bayes_posterior(z.reshape(-1, D), q)
    assert torch.equal(out.indices.reshape(-1), post.argmax(-1))
    assert torch.equal(out.z_q, q.codebook.detach()[out.indices])
    assert torch.equal(q.decode(q.encode(z)), out.z_q)


def test_posterior_mean_eval_option_gives_the_papers_soft_output():
    q = make(eval_output="posterior_mean").eval()
    z = torch.randn(2, 8, D)
    out = q(z)
    post = bayes_posterior(z.reshape(-1, D), q)
    assert torch.allclose(out.z_q.reshape(-1, D), post @ q.codebook.detach(), atol=1e-5)
    # documented: the soft output is not what the hard index decodes to
    assert not torch.allclose(q.decode(q.encode(z)), out.z_q)
    assert torch.equal(q.encode(z).reshape(-1), post.argmax(-1))  # same indices as the hard mode


def test_image_latents_use_the_same_posterior():
    q = make(noise_std=0.0)
    z = torch.randn(2, D, 3, 5)
    out = q(z)
    rows = z.permute(0, 2, 3, 1).reshape(-1, D)
    expected = (bayes_posterior(rows, q) @ q.codebook.detach()).reshape(2, 3, 5, D).permute(0, 3, 1, 2)
    assert torch.allclose(out.z_q, expected, atol=1e-5)


def test_gradients_reach_codebook_variances_and_encoder():
    q = make()
    z = torch.randn(2, 8, D, requires_grad=True)
    q(z).z_q.pow(2).sum().backward()
    assert (q.codebook.grad.abs().sum(-1) > 0).all()
    assert q.log_variance.grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0


def test_variance_metrics_and_soft_perplexity():
    q = make(noise_std=0.0)
    out = q(torch.randn(2, 8, D))
    assert torch.allclose(out.metrics["sigma2_codes"], torch.linspace(-1.0, 1.5, K).exp().mean())
    assert 1.0 <= out.metrics["soft_perplexity"] <= K


def test_bad_options_are_rejected():
    with pytest.raises(QuantizerInputError, match="eval_output"):
        build_quantizer("soft_vq", num_codes=K, code_dim=D, eval_output="mean")
    with pytest.raises(QuantizerInputError, match="noise_std"):
        build_quantizer("soft_vq", num_codes=K, code_dim=D, noise_std=-1.0)
