"""`edvae`: Evidential dVAE (Baykal et al., EdVAE), a Dirichlet posterior over code probabilities.

The encoder emits K logits l (``input_dim == num_codes``). Following EdVAE App. B/C/D:

* alpha = exp(clamp(l, max=20)) + 1   (Alg. 1; App. D clamps the logits at 20 "for the
  training stability"), so log alpha = softplus(clamp(l, max=20)) is computed stably;
* pi = alpha / S with S = sum_k alpha_k, the Dirichlet mean (App. B, after eq. 26:
  "pi_k = alpha_k / S ... since sequential sampling from the Dirichlet distribution and
  the Categorical distribution causes an instability in the training");
* training: a relaxed one-hot sample y ~ RelaxedOneHotCategorical(tau = ctx.temperature,
  probs = pi), z_q = y @ codebook (App. B: "z_q(x) = z * M"), so the codebook is trained by
  the reconstruction gradient directly, with no stop-gradient;
* loss: ``beta * ctx.kl_weight * KL(Dir(alpha) || Dir(1, ..., 1))`` in closed form (App. A):

      KL = log Gamma(S) - log Gamma(K) - sum_k log Gamma(alpha_k)
           + sum_k (alpha_k - 1) (psi(alpha_k) - psi(S)).

  The terms reach ~1e10 when a logit sits at the clamp (alpha ~ e^20) and cancel to a
  number of order K; float32 would lose all of it, so rows whose total evidence S exceeds
  1e5 are evaluated in float64. Below that the cancelling terms are ~1e6 at most and float32
  keeps the value to ~0.1 nat (the gradient, made of digamma/trigamma terms that do not
  cancel, is accurate either way), and the float64 pass (80 % of an EdVAE training step at
  K = 512 on CPU) is skipped for them.

Eval: the argmax of pi (Alg. 2 samples; ``ctx.sample`` does so from Cat(pi)), with
``z_q == codebook[index]`` exactly. Metrics: ``uncertainty`` = mean K / S (the evidential
uncertainty that EdVAE App. E.2 tracks against perplexity) and ``evidence`` = mean S.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from speechsq.quantizers.base import QuantizerInputError
from speechsq.quantizers.gumbel import CategoricalCodebookQuantizer
from speechsq.quantizers.registry import register_quantizer


#: rows with total evidence S above this are evaluated in float64 (see the module docstring)
FLOAT64_ABOVE_EVIDENCE = 1e5


def _dirichlet_kl_rows(log_alpha: Tensor) -> Tensor:
    alpha = log_alpha.exp()
    k = alpha.shape[-1]
    total = alpha.sum(-1)
    return (
        torch.lgamma(total)
        - math.lgamma(k)
        - torch.lgamma(alpha).sum(-1)
        + ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(total)[:, None])).sum(-1)
    )


def dirichlet_kl_to_uniform(log_alpha: Tensor) -> Tensor:
    """KL(Dir(alpha) || Dir(1, ..., 1)) per row (EdVAE App. A), from log alpha (N, K).

    Float32 for moderate evidence, float64 for the rows near the clamp (module docstring);
    returned in the input dtype.
    """
    log_total = torch.logsumexp(log_alpha.detach().float(), dim=-1)
    exact = log_total > math.log(FLOAT64_ABOVE_EVIDENCE)
    if not exact.any():
        return _dirichlet_kl_rows(log_alpha.float()).to(log_alpha.dtype)
    if exact.all():
        return _dirichlet_kl_rows(log_alpha.double()).to(log_alpha.dtype)
    kl = torch.empty(log_alpha.shape[0], dtype=torch.float64, device=log_alpha.device)
    kl = kl.index_put((~exact).nonzero(as_tuple=True), _dirichlet_kl_rows(log_alpha[~exact].float()).double())
    kl = kl.index_put(exact.nonzero(as_tuple=True), _dirichlet_kl_rows(log_alpha[exact].double()))
    return kl.to(log_alpha.dtype)


@register_quantizer("edvae")
class EvidentialDVAEQuantizer(CategoricalCodebookQuantizer):
    """EdVAE (see the module docstring). Options: ``beta`` (KL weight upper bound; the paper's
    is 5e-7 on CIFAR10 and 1e-7 elsewhere for its per-pixel loss), ``logit_clamp`` (20),
    ``hard`` (straight-through one-hot forward), ``init`` (codebook init, default normal).
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        beta: float = 1.0,
        logit_clamp: float = 20.0,
        hard: bool = False,
        init: str = "normal",
    ):
        super().__init__(num_codes, code_dim, beta=beta, hard=hard, init=init)
        if not float(logit_clamp) > 0:
            raise QuantizerInputError(f"logit_clamp must be > 0 (the paper uses 20), got {logit_clamp}")
        self.logit_clamp = float(logit_clamp)

    @property
    def input_dim(self) -> int:
        return self.num_codes

    def log_alpha(self, rows: Tensor) -> Tensor:
        # log(exp(l) + 1) == softplus(l): no overflow, and exactly Alg. 1's alpha.
        return F.softplus(rows.clamp(max=self.logit_clamp))

    def posterior_log_probs(self, rows: Tensor) -> Tensor:
        # log pi = log alpha - log S (App. B, pi_k = alpha_k / S)
        return torch.log_softmax(self.log_alpha(rows), dim=-1)

    def kl_terms(self, rows: Tensor, log_probs: Tensor, probs: Tensor) -> Tensor:
        return dirichlet_kl_to_uniform(self.log_alpha(rows))

    def extra_metrics(self, rows: Tensor, log_probs: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            total = self.log_alpha(rows).exp().sum(-1)
            return {"uncertainty": (self.num_codes / total).mean(), "evidence": total.mean()}
