"""`soft_vq` (Wu & Flierl): Bayes posterior over codewords, the paper's eq. (27) objective with a
straight-through decoder input and per-input variances (default), and speechsq's posterior-mean
variant with global per-code variances (``variance=per_code, estimator=posterior_mean``)."""

import pytest
import torch
from torch.distributions import Normal

from speechsq.quantizers import QuantizerInputError, build_quantizer

K, D = 6, 4


VARIANT = {"variance": "per_code", "estimator": "posterior_mean", "noise_std": 0.1}


def make(**options):
    """speechsq's posterior-mean variant (the tests below up to the paper section)."""
    q = build_quantizer("soft_vq", num_codes=K, code_dim=D, **{**VARIANT, **options})
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
    # the posterior mean is differentiable in all three: compare with autograd of the closed form
    q = make(noise_std=0.0)
    z = torch.randn(2, 8, D, requires_grad=True)
    q(z).z_q.pow(2).sum().backward()
    book = q.codebook.detach().clone().requires_grad_(True)
    log_var = q.log_variance.detach().clone().requires_grad_(True)
    rows = z.detach().reshape(-1, D).requires_grad_(True)
    log_lik = Normal(book[None], log_var.exp().sqrt()[None, :, None]).log_prob(rows[:, None, :]).sum(-1)
    (torch.softmax(log_lik, -1) @ book).pow(2).sum().backward()
    torch.testing.assert_close(q.codebook.grad, book.grad)
    torch.testing.assert_close(q.log_variance.grad, log_var.grad)
    torch.testing.assert_close(z.grad.reshape(-1, D), rows.grad)


def test_variance_metrics_and_soft_perplexity():
    q = make(noise_std=0.0)
    z_rows = torch.randn(16, D)
    out = q(z_rows.reshape(2, 8, D))
    assert torch.allclose(out.metrics["sigma2_codes"], torch.linspace(-1.0, 1.5, K).exp().mean())
    assert torch.allclose(out.metrics["sigma2_min"], torch.tensor(-1.0).exp())
    assert torch.allclose(out.metrics["sigma2_max"], torch.tensor(1.5).exp())
    post = bayes_posterior(z_rows, q)
    mean_post = post.mean(0)
    expected = torch.exp(-(mean_post * mean_post.log()).sum())  # perplexity of the average posterior
    assert out.metrics["soft_perplexity"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_options_are_rejected():
    with pytest.raises(QuantizerInputError, match="eval_output"):
        build_quantizer("soft_vq", num_codes=K, code_dim=D, eval_output="mean")
    with pytest.raises(QuantizerInputError, match="noise_std"):
        build_quantizer("soft_vq", num_codes=K, code_dim=D, noise_std=-1.0)
    with pytest.raises(QuantizerInputError, match="variance must be one of"):
        build_quantizer("soft_vq", num_codes=K, code_dim=D, variance="global")
    with pytest.raises(QuantizerInputError, match="estimator must be one of"):
        build_quantizer("soft_vq", num_codes=K, code_dim=D, estimator="ste")
    with pytest.raises(QuantizerInputError, match="beta"):
        build_quantizer("soft_vq", num_codes=K, code_dim=D, beta=-0.5)


# --------------------------------------------------------------------------------------
# the paper's objective (the default): per-input variances, eq. (27), straight-through input
# --------------------------------------------------------------------------------------
def paper_quantizer(**options):
    torch.manual_seed(0)
    q = build_quantizer("soft_vq", num_codes=K, code_dim=D, **options)
    with torch.no_grad():
        q.codebook.copy_(torch.randn(K, D))
    return q


def paper_rows(n=10, seed=4):
    """[z (D), log sigma_k^2 (K)] rows with clearly different variances per input and code."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, D, generator=g), torch.rand(n, K, generator=g) * 3.0 - 1.5], 1)


def per_input_posterior(z: torch.Tensor, log_var: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """p(e_k | z) = N(z; e_k, s_k(x)^2 I) / sum_j N(z; e_j, s_j(x)^2 I), per row, with torch.distributions."""
    std = log_var.exp().sqrt()  # (N, K)
    log_lik = Normal(codebook[None], std[:, :, None]).log_prob(z[:, None, :]).sum(-1)
    return torch.softmax(log_lik, -1)


def test_paper_default_takes_the_per_input_variances_from_the_encoder():
    q = paper_quantizer()
    assert (q.variance, q.estimator, q.beta, q.noise_std) == ("per_input", "straight_through", 0.25, 0.0)
    assert q.input_dim == D + K
    rows = paper_rows()
    z, log_var = rows[:, :D], rows[:, D:]
    out = q.eval()(rows[None])
    post = per_input_posterior(z, log_var, q.codebook.detach())
    assert torch.equal(out.indices.reshape(-1), post.argmax(-1))
    # the per-input variance decides the posterior: the same z with other variances picks other codes
    flipped = torch.cat([z, log_var.flip(-1)], 1)
    assert not torch.equal(q(flipped[None]).indices.reshape(-1), out.indices.reshape(-1))
    assert torch.equal(q(flipped[None]).indices.reshape(-1), per_input_posterior(z, log_var.flip(-1), q.codebook.detach()).argmax(-1))


def test_paper_codebook_init_is_uniform_unit_scaling():
    # U(-sqrt(3/K), sqrt(3/K)): with 512 x 4 draws the extremes come within 1 % of the limit
    q = build_quantizer("soft_vq", num_codes=512, code_dim=D)
    limit = (3.0 / 512) ** 0.5
    book = q.codebook.detach()
    assert book.abs().max() <= limit and book.max() > 0.99 * limit and book.min() < -0.99 * limit


def test_paper_init_log_variance_is_added_to_the_encoders_log_variances():
    q = paper_quantizer(init_log_variance=0.8).eval()
    rows = paper_rows()
    out = q(rows[None])
    post = per_input_posterior(rows[:, :D], rows[:, D:] + 0.8, q.codebook.detach())
    assert torch.equal(out.indices.reshape(-1), post.argmax(-1))
    torch.testing.assert_close(out.metrics["sigma2_codes"], (rows[:, D:] + 0.8).exp().mean())
    assert not torch.equal(post.argmax(-1), per_input_posterior(rows[:, :D], rows[:, D:] - 0.8, q.codebook.detach()).argmax(-1))


def test_paper_loss_terms_are_the_closed_forms_of_eq27():
    q = paper_quantizer(beta=0.7).train()
    rows = paper_rows(n=6)
    z, log_var = rows[:, :D], rows[:, D:]
    out = q(rows.reshape(2, 3, D + K))  # B = 2 examples of 3 positions
    z_hat = per_input_posterior(z, log_var, q.codebook.detach()) @ q.codebook.detach()
    squared = (z - z_hat).pow(2).sum() / 2  # per example
    assert set(out.terms) == {"codebook", "commitment"}
    torch.testing.assert_close(out.terms["codebook"], squared)
    torch.testing.assert_close(out.terms["commitment"], 0.7 * squared)
    torch.testing.assert_close(out.loss, 1.7 * squared)


def test_paper_stop_gradients_of_eq27():
    q = paper_quantizer(beta=0.7).train()
    rows = paper_rows(n=6).requires_grad_(True)
    out = q(rows[None])
    z_hat = out.z_q.detach().reshape(-1, D)
    # commitment: beta ||z' - sg(z^_q)||^2 -> d/dz = 2 beta (z - z^_q); nothing to the codebook
    grad_rows, = torch.autograd.grad(out.terms["commitment"], rows, retain_graph=True)
    torch.testing.assert_close(grad_rows[:, :D], 2 * 0.7 * (rows.detach()[:, :D] - z_hat))
    assert torch.count_nonzero(grad_rows[:, D:]) == 0
    assert torch.autograd.grad(out.terms["commitment"], q.codebook, retain_graph=True, allow_unused=True)[0] is None
    # codebook: ||sg(z') - z^_q||^2 -> d/de_k = 2 sum_n p_nk (z^_q,n - z_n) through z^_q = P E
    post = per_input_posterior(rows.detach()[:, :D], rows.detach()[:, D:], q.codebook.detach())
    grad_book, = torch.autograd.grad(out.terms["codebook"], q.codebook, retain_graph=True)
    expected = post.t() @ (2 * (z_hat - rows.detach()[:, :D]))
    # (plus the path through the posterior weights, which depend on the codebook too)
    weights = q.codebook.detach().requires_grad_(True)
    p = per_input_posterior(rows.detach()[:, :D], rows.detach()[:, D:], weights)
    full, = torch.autograd.grad((rows.detach()[:, :D] - p @ weights).pow(2).sum(), weights)
    torch.testing.assert_close(grad_book, full)
    assert not torch.allclose(full, expected)  # the posterior-weight path is there
    # codebook term to the encoder: only through the posterior weights p(z', log sigma^2), not through sg(z')
    grad_cb_rows, = torch.autograd.grad(out.terms["codebook"], rows, retain_graph=True)
    x = rows.detach().clone().requires_grad_(True)
    p = per_input_posterior(x[:, :D], x[:, D:], q.codebook.detach())
    via_weights, = torch.autograd.grad((rows.detach()[:, :D] - p @ q.codebook.detach()).pow(2).sum(), x)
    torch.testing.assert_close(grad_cb_rows, via_weights)


def test_paper_decoder_input_is_straight_through():
    q = paper_quantizer().train()
    rows = paper_rows(n=8).reshape(2, 4, D + K).requires_grad_(True)
    out = q(rows)
    flat = rows.detach().reshape(-1, D + K)
    z_hat = per_input_posterior(flat[:, :D], flat[:, D:], q.codebook.detach()) @ q.codebook.detach()
    torch.testing.assert_close(out.z_q.detach().reshape(-1, D), z_hat)  # forward: the paper's z^_q
    upstream = torch.randn_like(out.z_q)
    grad_rows, grad_book = torch.autograd.grad((out.z_q * upstream).sum(), [rows, q.codebook], allow_unused=True)
    assert torch.equal(grad_rows[..., :D], upstream)  # identity to the encoder's latent channels
    assert torch.count_nonzero(grad_rows[..., D:]) == 0  # nothing to the variances ...
    assert grad_book is None  # ... nor to the codebook from the decoder


def test_paper_noise_enters_z_prime_only():
    q = paper_quantizer(noise_std=0.3).train()
    rows = paper_rows(n=5)
    torch.manual_seed(7)
    out = q(rows[None])
    torch.manual_seed(7)
    noisy = rows[:, :D] + 0.3 * torch.randn(5, D)
    z_hat = per_input_posterior(noisy, rows[:, D:], q.codebook.detach()) @ q.codebook.detach()
    torch.testing.assert_close(out.z_q.reshape(-1, D), z_hat)
    torch.testing.assert_close(out.terms["commitment"], 0.25 * (noisy - z_hat).pow(2).sum())


def test_paper_eval_is_the_argmax_codeword_and_round_trips():
    q = paper_quantizer().eval()
    rows = paper_rows(n=12).reshape(3, 4, D + K)
    out = q(rows)
    flat = rows.reshape(-1, D + K)
    post = per_input_posterior(flat[:, :D], flat[:, D:], q.codebook.detach())
    assert torch.equal(out.indices.reshape(-1), post.argmax(-1))
    assert torch.equal(q.decode(q.encode(rows)), out.z_q)
    # the eq. (27) terms are reported at eval too (no noise there), for a validation loss
    torch.testing.assert_close(out.terms["codebook"], (flat[:, :D] - post @ q.codebook.detach()).pow(2).sum() / 3)
