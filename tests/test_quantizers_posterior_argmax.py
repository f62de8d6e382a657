"""Eval and encode of every stochastic quantizer pick the posterior *argmax*.

The posterior of each quantizer is recomputed here from its closed form in the paper
(torch.distributions where one exists), independently of the quantizer's own code, on
random inputs whose posterior argmax and argmin differ at every position. A quantizer that
takes the argmin, or any other index, at eval (issue 14: "SQ-VAE eval/encode taking the argmin
instead of the argmax of the posterior") fails here, and a stochastic quantizer registered
without a closed form below fails ``test_every_stochastic_quantizer_has_a_closed_form``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, Normal

from speechsq.quantizers import build_quantizer, list_quantizers, quantizer_class

K, D = 16, 8


def _gaussian_log_lik(z: torch.Tensor, codebook: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """sum_j log N(z_j; b_kj, sigma_j^2) for every code, (N, K); log_var (N, 1), (N, D) or (N, K)."""
    if log_var.shape[-1] == codebook.shape[0] and log_var.shape[-1] != z.shape[-1]:  # one variance per code
        std = log_var.exp().sqrt()[:, :, None].expand(-1, -1, z.shape[-1])
    else:
        std = log_var.exp().sqrt().expand(z.shape[0], z.shape[-1])[:, None, :].expand(-1, codebook.shape[0], -1)
    return Normal(codebook[None], std).log_prob(z[:, None, :]).sum(-1)


def _sq_log_var(q, rows: torch.Tensor) -> torch.Tensor:
    """Table 1 (and the image code's additive form), from the encoder's rows of ONE example."""
    s = q.log_sigma2.detach()
    extra = rows[:, q.code_dim :]
    if q.variance_type == "II":
        extra = extra.mean(0, keepdim=True).expand(rows.shape[0], -1)  # one variance per example
    head = extra if extra.shape[1] else torch.zeros(rows.shape[0], 1)
    if q.variance_form == "additive":
        return torch.log(head.exp() + s.exp())
    return head + s


def _sq_gaussian(q, rows):
    return _gaussian_log_lik(rows[:, : q.code_dim], q.codebook.detach(), _sq_log_var(q, rows))


def _sq_vmf(q, rows):
    # eq. (13): P(b_k | z) ~ exp(kappa_phi mu_k^T z) on the sphere
    return q.kappa_phi.detach() * F.cosine_similarity(rows[:, None, :], q.codebook.detach()[None], dim=-1)


def _gumbel_vq(q, rows):
    return -torch.cdist(rows, q.codebook.detach()).pow(2)


def _dvae(q, rows):
    return torch.log_softmax(rows, -1)


def _edvae(q, rows):
    # EdVAE Alg. 1: alpha = exp(min(l, 20)) + 1; pi = E_Dir(alpha)[pi] = alpha / S (App. B)
    alpha = rows.clamp(max=20.0).exp() + 1.0
    return Dirichlet(alpha).mean.log()


def _soft_vq(q, rows):
    z = rows[:, : q.code_dim]
    log_var = q.log_variance.detach()[None].expand(rows.shape[0], -1) if q.variance == "per_code" else rows[:, q.code_dim :]
    return _gaussian_log_lik(z, q.codebook.detach(), log_var)


def _gmvq(q, rows):
    # eq. (15)-(17): l_c = -1/2 sum_i softplus(r_i) (z_i - mu_ci)^2
    z_hat, raw = rows[:, : q.code_dim], rows[:, q.code_dim :]
    w = F.softplus(raw)
    return -0.5 * (w[:, None, :] * (z_hat[:, None, :] - q.codebook.detach()[None]).pow(2)).sum(-1)


CLOSED_FORMS = {
    "sq_gauss1": _sq_gaussian,
    "sq_gauss2": _sq_gaussian,
    "sq_gauss3": _sq_gaussian,
    "sq_gauss4": _sq_gaussian,
    "sq_fixed": _sq_gaussian,
    "sq_vmf": _sq_vmf,
    "gumbel_vq": _gumbel_vq,
    "dvae": _dvae,
    "edvae": _edvae,
    "soft_vq": _soft_vq,
    "gmvq": _gmvq,
    "gmvq_entropy": _gmvq,
}

#: variants whose posterior is formed differently: each is checked too
VARIANTS = [
    ("sq_gauss1", {"variance_form": "additive", "log_sigma2_init": math.log(20.0)}),
    ("sq_gauss2", {"variance_form": "additive"}),
    ("sq_gauss3", {"variance_form": "additive"}),
    ("sq_gauss4", {"variance_form": "additive"}),
    ("soft_vq", {"variance": "per_code", "estimator": "posterior_mean"}),
]

STOCHASTIC = [n for n in list_quantizers() if quantizer_class(n).stochastic]


def test_every_stochastic_quantizer_has_a_closed_form():
    assert set(STOCHASTIC) == set(CLOSED_FORMS)


def _trained_quantizer(name, options):
    torch.manual_seed(3)
    q = build_quantizer(name, num_codes=K, code_dim=D, **options)
    with torch.no_grad():  # a codebook and variances away from their initial symmetric values
        q.codebook.copy_(torch.randn(K, D))
        if hasattr(q, "log_variance"):
            q.log_variance.copy_(torch.linspace(-1.0, 1.0, K))
    return q.eval()


def _rows(q, n=40, seed=5):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, q.input_dim, generator=g)
    rows[:, q.code_dim :] *= 0.5  # moderate log-variances / weights
    return rows


@pytest.mark.parametrize(("name", "options"), [(n, {}) for n in STOCHASTIC] + VARIANTS, ids=lambda v: str(v))
def test_eval_and_encode_take_the_argmax_of_the_closed_form_posterior(name, options):
    q = _trained_quantizer(name, options)
    rows = _rows(q)
    logits = CLOSED_FORMS[name](q, rows)
    expected, worst = logits.argmax(-1), logits.argmin(-1)
    assert (expected != worst).all()  # so an argmin (or a reversed order) cannot pass
    z = rows[None]  # one example of 40 positions (type II pools its variance over them)
    out = q(z)
    assert torch.equal(out.indices.reshape(-1), expected)
    assert torch.equal(q.encode(z).reshape(-1), expected)
    # image layout: the same rows as a (1, C, 5, 8) map
    image = rows.reshape(1, 5, 8, q.input_dim).permute(0, 3, 1, 2)
    assert torch.equal(q.encode(image).reshape(-1), expected)
