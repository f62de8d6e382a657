"""`gumbel_vq` (GS-VQ-VAE) and `dvae`: the relaxed categorical posterior and its KL to uniform."""

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from speechsq.quantizers import QuantizerInputError, StepContext, build_quantizer

K, D = 6, 4


def dvae_with_identity_codebook(k: int = K) -> torch.nn.Module:
    """dVAE whose codebook is the identity, so z_q shows the relaxed sample y itself."""
    q = build_quantizer("dvae", num_codes=k, code_dim=k)
    with torch.no_grad():
        q.codebook.copy_(torch.eye(k))
    return q


def test_relaxed_sample_becomes_one_hot_as_temperature_goes_to_zero():
    q = dvae_with_identity_codebook()
    logits = torch.randn(4, 50, K)
    cold = q(logits, ctx=StepContext(temperature=1e-3)).z_q
    warm = q(logits, ctx=StepContext(temperature=5.0)).z_q
    for y in (cold, warm):  # every relaxed sample lies on the simplex
        assert torch.allclose(y.sum(-1), torch.ones(4, 50), atol=1e-5)
        assert (y >= 0).all()
    assert cold.max(-1).values.min() > 0.999
    assert warm.max(-1).values.mean() < 0.9
    # the cold sample is the one-hot of the index the quantizer reports
    idx = q(logits, ctx=StepContext(temperature=1e-4))
    assert torch.allclose(idx.z_q, torch.nn.functional.one_hot(idx.indices, K).float(), atol=1e-3)


def test_training_indices_are_draws_from_the_posterior():
    """Gumbel-max: the argmax of the (relaxed) sample is distributed as softmax(logits)."""
    q = dvae_with_identity_codebook()
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, -3.0])
    z = logits.expand(1, 40000, K).contiguous()
    counts = torch.bincount(q(z, ctx=StepContext(temperature=0.5)).indices.reshape(-1), minlength=K).float()
    assert torch.allclose(counts / counts.sum(), torch.softmax(logits, 0), atol=0.01)


def test_gumbel_vq_posterior_is_softmax_of_negative_squared_distances():
    q = build_quantizer("gumbel_vq", num_codes=K, code_dim=D).eval()
    z = torch.randn(3, 7, D)
    flat = q.quantize_flat(z.reshape(-1, D), StepContext())
    expected = torch.softmax(-torch.cdist(z.reshape(-1, D), q.codebook.detach()).pow(2), dim=-1)
    assert torch.allclose(flat.probs, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["gumbel_vq", "dvae"])
def test_kl_to_uniform_matches_direct_and_torch_distributions(name):
    beta, kl_weight = 0.3, 0.7
    q = build_quantizer(name, num_codes=K, code_dim=D, beta=beta)
    z = torch.randn(2, 9, q.input_dim)
    out = q(z, ctx=StepContext(kl_weight=kl_weight))
    rows = z.reshape(-1, q.input_dim)
    if name == "dvae":
        probs = torch.softmax(rows, -1)
    else:
        probs = torch.softmax(-torch.cdist(rows, q.codebook.detach()).pow(2), -1)
    direct = (probs * torch.log(probs * K)).sum()
    by_torch = kl_divergence(Categorical(probs=probs), Categorical(probs=torch.full((K,), 1.0 / K))).sum()
    assert torch.allclose(direct, by_torch, atol=1e-4)
    # row sums over positions, averaged over the 2 examples, weighted by beta * kl_weight
    assert torch.allclose(out.terms["kl"], beta * kl_weight * direct / 2, atol=1e-4)
    assert torch.allclose(out.loss, out.terms["kl"])
    assert torch.allclose(out.metrics["kl_per_position"], direct / rows.shape[0], atol=1e-5)


def test_kl_is_zero_for_uniform_posterior_and_log_k_for_one_hot():
    q = build_quantizer("dvae", num_codes=K, code_dim=D)
    uniform = q(torch.zeros(1, 3, K))
    assert uniform.terms["kl"].abs() < 1e-6
    peaked = q(torch.tensor([[[1e4] + [0.0] * (K - 1)]]))
    assert torch.allclose(peaked.terms["kl"], torch.tensor(math.log(K)), atol=1e-4)


@pytest.mark.parametrize("name", ["gumbel_vq", "dvae"])
def test_eval_is_argmax_and_round_trips(name):
    q = build_quantizer(name, num_codes=K, code_dim=D)
    z = torch.randn(2, 11, q.input_dim)
    q.eval()
    out = q(z)
    flat = q.quantize_flat(z.reshape(-1, q.input_dim), StepContext())
    assert torch.equal(out.indices.reshape(-1), flat.probs.argmax(-1))
    assert torch.equal(out.z_q, q.codebook.detach()[out.indices])
    assert torch.equal(q.decode(q.encode(z)), out.z_q)
    assert torch.equal(q(z).z_q, out.z_q)  # deterministic


def test_eval_sampling_option_draws_from_the_posterior():
    q = build_quantizer("dvae", num_codes=K, code_dim=D).eval()
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.0, 0.5])
    out = q(logits.expand(1, 30000, K).contiguous(), ctx=StepContext(sample=True))
    freq = torch.bincount(out.indices.reshape(-1), minlength=K).float() / 30000
    assert torch.allclose(freq, torch.softmax(logits, 0), atol=0.01)
    assert torch.equal(out.z_q[0], q.codebook.detach()[out.indices[0]])


@pytest.mark.parametrize("name", ["gumbel_vq", "dvae"])
def test_gradients_reach_codebook_and_encoder(name):
    q = build_quantizer(name, num_codes=K, code_dim=D)
    z = torch.randn(2, 8, q.input_dim, requires_grad=True)
    out = q(z)
    (out.z_q.pow(2).sum() + out.loss).backward()
    assert q.codebook.grad is not None and (q.codebook.grad.abs().sum(-1) > 0).all()  # every code
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_hard_option_forwards_codewords_but_keeps_relaxed_gradients():
    q = build_quantizer("dvae", num_codes=K, code_dim=D, hard=True)
    z = torch.randn(1, 10, K, requires_grad=True)
    out = q(z)
    assert torch.allclose(out.z_q, q.codebook.detach()[out.indices], atol=1e-6)
    out.z_q.sum().backward()
    assert z.grad.abs().sum() > 0


def test_hard_option_gradient_is_exactly_the_relaxed_samples_gradient():
    # straight-through Gumbel-softmax: forward one_hot(y), backward d y (same noise, same tau)
    hard, soft = build_quantizer("dvae", num_codes=K, code_dim=D, hard=True), build_quantizer("dvae", num_codes=K, code_dim=D)
    soft.load_state_dict(hard.state_dict())
    logits = torch.randn(1, 10, K)
    upstream = torch.randn(1, 10, D)
    grads = []
    for q in (hard, soft):
        z = logits.clone().requires_grad_(True)
        torch.manual_seed(4)
        out = q(z, ctx=StepContext(temperature=0.7))
        (out.z_q * upstream).sum().backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_entropy_metric_is_the_mean_posterior_entropy():
    q = build_quantizer("dvae", num_codes=K, code_dim=D)
    logits = torch.randn(2, 9, K)
    out = q(logits)
    expected = Categorical(logits=logits.reshape(-1, K)).entropy().mean()
    torch.testing.assert_close(out.metrics["entropy"], expected)


def test_dvae_asks_for_k_logits_and_rejects_other_widths():
    q = build_quantizer("dvae", num_codes=K, code_dim=D)
    assert q.input_dim == K
    assert q(torch.randn(1, 3, K)).z_q.shape == (1, 3, D)
    with pytest.raises(QuantizerInputError, match=f"expects {K} latent channels"):
        q(torch.randn(1, 3, D))


def test_negative_beta_is_rejected():
    with pytest.raises(QuantizerInputError, match="beta"):
        build_quantizer("gumbel_vq", num_codes=K, code_dim=D, beta=-1.0)
