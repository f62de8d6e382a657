"""`soft_vq`: soft VQ-VAE (Wu & Flierl, "Vector Quantization-Based Regularization for Autoencoders").

The bottleneck is a Bayesian estimator of the codeword behind a *noisy* latent:

* training adds noise to the encoder output, z~ = z_e + n with n ~ N(0, noise_std^2 I);
* each codeword e_k has a Gaussian likelihood with its own learned variance,
  p(z~ | e_k) = N(z~; e_k, sigma_k^2 I), and the prior over codewords is uniform;
* the posterior is p(e_k | z~) = p(z~|e_k) / sum_j p(z~|e_j), i.e. a softmax over
  ``-||z~ - e_k||^2 / (2 sigma_k^2) - (d/2) log sigma_k^2`` (the normalising constant of
  each Gaussian matters because the variances differ);
* the decoder receives the posterior mean (the MMSE estimate) z_q = sum_k p(e_k|z~) e_k,
  a differentiable function of the encoder, the codebook and the variances, so the model
  trains end to end from the reconstruction loss alone: this quantizer adds no latent loss
  term (``terms`` is empty, ``loss`` is 0);
* the hard index is the posterior argmax.

Evaluation output (a deliberate choice, see ``eval_output``): the paper's decoder input is
always the soft posterior mean. That is not a function of the hard index, so it cannot
round-trip through ``decode(encode(z))``. speechsq's contract requires that round trip, so
the default ``eval_output="hard"`` returns the codeword of the posterior argmax (no noise);
``eval_output="posterior_mean"`` gives the paper's soft output (no noise added at eval),
for which ``decode(encode(z))`` returns the argmax codeword and differs from the eval
forward. Indices are the same in both modes. ``ctx.sample`` at eval draws the index from
the posterior of a noisy latent (hard mode) instead of the argmax.

Defaults: ``noise_std`` = 0.1 (the level is not stated in the appendix we follow; set it to
the scale of your latents), learned per-code log-variances initialised at 0 (sigma_k^2 = 1),
the codebook initialised by "uniform unit scaling" as in the paper's training setup
(U(-sqrt(3/K), sqrt(3/K)), TensorFlow's rule for a (K, d) variable).

Metrics: ``sigma2_codes`` (mean learned sigma_k^2, how smooth the soft assignment is),
``sigma2_min`` and ``sigma2_max``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from speechsq.quantizers import functional as QF
from speechsq.quantizers.base import FlatQuantized, Quantizer, QuantizerInputError, StepContext
from speechsq.quantizers.gumbel import row_entropy, sample_categorical
from speechsq.quantizers.init import check_init_scheme, init_codebook_
from speechsq.quantizers.registry import register_quantizer

EVAL_OUTPUTS = ("hard", "posterior_mean")


@register_quantizer("soft_vq")
class SoftVectorQuantizer(Quantizer):
    """Soft VQ-VAE bottleneck (see the module docstring)."""

    stochastic = True

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        noise_std: float = 0.1,
        init_log_variance: float = 0.0,
        eval_output: str = "hard",
        init: str = "unit_scaling",
    ):
        super().__init__(num_codes, code_dim)
        if not float(noise_std) >= 0:
            raise QuantizerInputError(f"noise_std must be >= 0, got {noise_std}")
        if eval_output not in EVAL_OUTPUTS:
            raise QuantizerInputError(f"eval_output must be one of {EVAL_OUTPUTS}, got {eval_output!r}")
        self.noise_std = float(noise_std)
        self.eval_output = eval_output
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim))
        if init == "unit_scaling":
            limit = math.sqrt(3.0 / num_codes)
            with torch.no_grad():
                self.codebook.uniform_(-limit, limit)
        else:
            init_codebook_(self.codebook, check_init_scheme(init))
        # log sigma_k^2, one per codeword: unconstrained, so sigma_k^2 stays positive
        self.log_variance = nn.Parameter(torch.full((num_codes,), float(init_log_variance)))

    def log_posterior(self, rows: Tensor) -> Tensor:
        """log p(e_k | rows) under N(rows; e_k, sigma_k^2 I) likelihoods and a uniform prior, (N, K)."""
        sq = QF.squared_distances(rows, self.codebook)
        log_lik = -0.5 * sq * torch.exp(-self.log_variance) - 0.5 * self.code_dim * self.log_variance
        return torch.log_softmax(log_lik, dim=-1)

    def add_noise(self, rows: Tensor) -> Tensor:
        return rows + self.noise_std * torch.randn_like(rows) if self.noise_std > 0 else rows

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        sample_at_eval = not self.training and ctx.sample
        noisy = self.add_noise(rows) if (self.training or sample_at_eval) else rows
        log_probs = self.log_posterior(noisy)
        probs = log_probs.exp()
        if sample_at_eval:
            indices = sample_categorical(probs)
        else:
            indices = probs.detach().argmax(-1)
        if self.training or self.eval_output == "posterior_mean":
            z_q = probs @ self.codebook  # the Bayesian (posterior-mean) estimate
        else:
            z_q = self.lookup(indices)
        variances = self.log_variance.detach().exp()
        metrics = {
            "sigma2_codes": variances.mean(),
            "sigma2_min": variances.min(),
            "sigma2_max": variances.max(),
            "entropy": row_entropy(log_probs.detach(), probs.detach()).mean(),
        }
        return FlatQuantized(z_q=z_q, indices=indices, probs=probs, metrics=metrics)
