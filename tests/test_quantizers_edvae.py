"""`edvae`: Dirichlet evidence, its mean as the categorical posterior, the closed-form KL."""

import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

from speechsq.quantizers import QuantizerInputError, StepContext, build_quantizer
from speechsq.quantizers.edvae import dirichlet_kl_to_uniform

K, D = 8, 3


def reference_alpha(logits: torch.Tensor) -> torch.Tensor:
    """EdVAE Alg. 1 / App. D, in float64: alpha = exp(clamp(logits, max=20)) + 1."""
    return torch.exp(logits.double().clamp(max=20.0)) + 1.0


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_kl_matches_torch_distributions_dirichlet(scale):
    logits = scale * torch.randn(16, K)  # scale 30 drives many logits into the clamp at 20
    alpha = reference_alpha(logits)
    expected = kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones(K, dtype=torch.float64)))
    ours = dirichlet_kl_to_uniform(torch.nn.functional.softplus(logits.clamp(max=20.0)))
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours.double(), expected, rtol=1e-4, atol=1e-3)


def test_quantizer_kl_term_is_weighted_sum_of_dirichlet_kls():
    beta, kl_weight = 0.5, 0.25
    q = build_quantizer("edvae", num_codes=K, code_dim=D, beta=beta)
    logits = 2.0 * torch.randn(3, 5, K)
    out = q(logits, ctx=StepContext(kl_weight=kl_weight))
    alpha = reference_alpha(logits.reshape(-1, K))
    kl = kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones(K, dtype=torch.float64))).sum()
    assert torch.allclose(out.terms["kl"].double(), beta * kl_weight * kl / 3, rtol=1e-4)


def test_kl_is_zero_at_the_prior():
    # logits -> -inf gives alpha -> 1, i.e. Dir(1, ..., 1) itself
    assert dirichlet_kl_to_uniform(torch.nn.functional.softplus(torch.full((2, K), -40.0))).abs().max() < 1e-6


def test_posterior_is_the_dirichlet_mean_and_clamps_at_20():
    q = build_quantizer("edvae", num_codes=K, code_dim=D).eval()
    logits = torch.cat([torch.randn(4, K), torch.full((1, K), 25.0), 30 * torch.randn(3, K)])
    flat = q.quantize_flat(logits, StepContext())
    alpha = reference_alpha(logits)
    assert torch.allclose(flat.probs.double(), alpha / alpha.sum(-1, keepdim=True), atol=1e-6)
    # a logit above 20 acts exactly like 20 (App. E.3) and gets no gradient
    x = torch.tensor([[25.0] + [0.0] * (K - 1)], requires_grad=True)
    y = torch.tensor([[20.0] + [0.0] * (K - 1)])
    assert torch.equal(q.posterior_log_probs(x), q.posterior_log_probs(y))
    q.posterior_log_probs(x)[0, 0].backward()
    assert x.grad[0, 0] == 0


def test_training_samples_follow_pi_and_eval_is_its_argmax():
    q = build_quantizer("edvae", num_codes=K, code_dim=D)
    logits = torch.tensor([1.5, 0.0, -1.0, 2.0, 0.3, -2.0, 0.0, 1.0])
    alpha = reference_alpha(logits)
    pi = (alpha / alpha.sum()).float()
    out = q(logits.expand(1, 40000, K).contiguous(), ctx=StepContext(temperature=0.3))
    freq = torch.bincount(out.indices.reshape(-1), minlength=K).float() / 40000
    assert torch.allclose(freq, pi, atol=0.01)
    q.eval()
    z = torch.randn(2, 6, K)
    ev = q(z)
    assert torch.equal(ev.indices.reshape(-1), q.quantize_flat(z.reshape(-1, K), StepContext()).probs.argmax(-1))
    assert torch.equal(ev.z_q, q.codebook.detach()[ev.indices])
    assert torch.equal(q.decode(q.encode(z)), ev.z_q)


def test_gradients_reach_the_codebook_without_stop_gradient():
    q = build_quantizer("edvae", num_codes=K, code_dim=D)
    logits = torch.randn(2, 10, K, requires_grad=True)
    out = q(logits, ctx=StepContext(temperature=1.0))
    (out.z_q.pow(2).sum() + out.loss).backward()
    # z_q = y @ codebook with a relaxed y > 0 everywhere: every code receives a gradient
    assert (q.codebook.grad.abs().sum(-1) > 0).all()
    assert logits.grad.abs().sum() > 0
    # the KL alone also trains the encoder (towards less evidence)
    logits2 = (3 * torch.randn(1, 4, K)).requires_grad_()
    q(logits2).terms["kl"].backward()
    assert logits2.grad.abs().sum() > 0


def test_uncertainty_metric_is_k_over_total_evidence():
    q = build_quantizer("edvae", num_codes=K, code_dim=D)
    logits = torch.randn(2, 5, K)
    alpha = reference_alpha(logits.reshape(-1, K))
    out = q(logits)
    assert torch.allclose(out.metrics["uncertainty"].double(), (K / alpha.sum(-1)).mean(), rtol=1e-5)
    assert torch.allclose(out.metrics["evidence"].double(), alpha.sum(-1).mean(), rtol=1e-5)  # mean S


def test_input_dim_is_k_and_bad_options_are_rejected():
    assert build_quantizer("edvae", num_codes=K, code_dim=D).input_dim == K
    with pytest.raises(QuantizerInputError, match="logit_clamp"):
        build_quantizer("edvae", num_codes=K, code_dim=D, logit_clamp=0.0)
    with pytest.raises(QuantizerInputError, match="does not take option"):
        build_quantizer("edvae", num_codes=K, code_dim=D, sigma=1.0)


def test_kl_stays_finite_in_float32_inputs_at_the_clamp():
    # alpha ~ e^20 makes log Gamma terms ~1e10: the float64 evaluation keeps the KL exact
    logits = torch.full((1, K), -5.0)
    logits[0, 0] = 20.0
    ours = dirichlet_kl_to_uniform(torch.nn.functional.softplus(logits))
    alpha = reference_alpha(logits)
    expected = kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones(K, dtype=torch.float64)))
    assert torch.allclose(ours.double(), expected, rtol=1e-5)  # (float32 lgamma gives about -1 here, not 124)


def test_mixed_precision_kl_matches_float64_on_both_sides_of_the_switch():
    # K = 512 as in the speech model: moderate rows take the float32 path, rows with a
    # logit at the clamp the float64 one; both must agree with the float64 closed form,
    # and gradients must reach every row.
    from speechsq.quantizers.edvae import FLOAT64_ABOVE_EVIDENCE

    k = 512
    logits = torch.randn(8, k)
    logits[4:, 7] = 25.0  # clamped: S ~ e^20 > threshold
    logits[2, :3] = 10.3  # float32 path with large evidence: S ~ 3 e^10.3 + 509 ~ 9e4, just below the switch
    log_alpha = torch.nn.functional.softplus(logits.clamp(max=20.0)).requires_grad_(True)
    total = log_alpha.detach().double().exp().sum(-1)
    assert (total <= FLOAT64_ABOVE_EVIDENCE).any() and (total > FLOAT64_ABOVE_EVIDENCE).any()
    ours = dirichlet_kl_to_uniform(log_alpha)
    alpha = log_alpha.detach().double().exp()
    expected = kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones(k, dtype=torch.float64)))
    assert torch.allclose(ours.double(), expected, rtol=1e-5, atol=0.1)
    ours.sum().backward()
    assert torch.isfinite(log_alpha.grad).all() and (log_alpha.grad.abs().sum(-1) > 0).all()
