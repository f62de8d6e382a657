"""`sq_vmf`: vMF SQ-VAE (Takida et al. 2022, Sec. 3.4, eq. 12-14, App. B.2).

Latents and codes live on the unit hypersphere S^{D-1}. Dequantization is
``p(z_i | Z_q) = vMF(z_q,i, kappa_phi)`` (eq. 12); its Bayes inverse (eq. 13) is

    P(z_q,i = b_k | Z) = softmax_k( kappa_phi * b_k . z_i ),

with ``z_i`` and ``b_k`` L2-normalised. Training relaxes the categorical with Gumbel-softmax
(temperature from the trainer), ``z_q = w @ B_normalised``, and the latent part of eq. (14)
is ``R - H`` with ``R = sum_i kappa_phi (1 - z_q,i . z_i)`` (App. B.2, eq. 25) and the
posterior entropy H; terms ``regulariser`` and ``neg_entropy``. Eval: argmax (or a sample
with ``StepContext(sample=True)``) and the normalised code itself.

kappa_phi = 1 + exp(theta) > 1, theta trainable; ``kappa_init`` defaults to 1.05, the
authors' released configuration (``log_param_q_init = log 0.05``; the paper states none).
The metric ``kappa_phi`` shows the self-annealing (it should grow during training).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechsq.quantizers.base import FlatQuantized, Quantizer, QuantizerInputError, StepContext
from speechsq.quantizers.init import check_init_scheme, init_codebook_, kmeans_on_first_batch_
from speechsq.quantizers.registry import register_quantizer
from speechsq.quantizers.sq_gaussian import (
    hard_posterior_code,
    posterior_and_neg_entropy,
    posterior_metrics,
    relaxed_posterior_code,
)


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, p=2.0, dim=-1)


@register_quantizer("sq_vmf")
class VmfSQ(Quantizer):
    """vMF SQ-VAE quantizer. Options: ``kappa_init`` (> 1), ``init`` (codebook scheme)."""

    stochastic = True

    def __init__(self, num_codes: int, code_dim: int, kappa_init: float = 1.05, init: str = "normal"):
        super().__init__(num_codes, code_dim)
        if not (math.isfinite(float(kappa_init)) and float(kappa_init) > 1.0):
            raise QuantizerInputError(f"kappa_init must be a finite number > 1 (kappa_phi = 1 + exp(theta)), got {kappa_init}")
        self.init_scheme = check_init_scheme(init)
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim))
        init_codebook_(self.codebook, init)
        self.register_buffer("kmeans_done", torch.tensor(init != "kmeans"))
        self.log_kappa_excess = nn.Parameter(torch.tensor(math.log(float(kappa_init) - 1.0)))

    @property
    def kappa_phi(self) -> Tensor:
        return 1.0 + self.log_kappa_excess.exp()

    def lookup(self, indices: Tensor) -> Tensor:
        """Normalised codes: the vectors the eval forward hands to the decoder."""
        return _unit(self.codebook[indices])

    def posterior_logits(self, rows: Tensor) -> Tensor:
        """Eq. (13) logits kappa_phi * cos(b_k, z) as (N, K)."""
        return self.kappa_phi * (_unit(rows) @ _unit(self.codebook).t())

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        z = _unit(rows)
        if self.training and self.init_scheme == "kmeans":
            kmeans_on_first_batch_(self.codebook.data, self.kmeans_done, z)
        codes = _unit(self.codebook)
        kappa = self.kappa_phi
        if self.training:
            z_q, neg_entropy, indices, code_mass = relaxed_posterior_code(kappa * z, codes, codes, ctx.temperature)
        else:
            logits = (kappa * z) @ codes.t()  # scale the (N, D) side, not the (N, K) result
            z_q, indices = hard_posterior_code(logits, ctx, self.lookup)
            probs, neg_entropy = posterior_and_neg_entropy(logits)
            code_mass = probs.detach().sum(0)
        terms = {
            "regulariser": kappa * (z.shape[0] - (z * z_q).sum()),
            "neg_entropy": neg_entropy,
        }
        metrics = {"kappa_phi": kappa.detach(), **posterior_metrics(neg_entropy, code_mass, z.shape[0])}
        return FlatQuantized(z_q=z_q, indices=indices, loss_terms=terms, metrics=metrics)
