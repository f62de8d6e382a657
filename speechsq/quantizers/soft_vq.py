"""`soft_vq`: soft VQ-VAE (Wu & Flierl, "Vector Quantization-Based Regularization for Autoencoders").

The bottleneck is a Bayesian estimator of the codeword behind a latent ``z'``:

* each codeword e_k has a Gaussian likelihood p(z' | e_k) = N(z'; e_k, sigma_k^2 I) and the
  prior over codewords is uniform, so the posterior is

      p(e_k | z') = softmax_k( -||z' - e_k||^2 / (2 sigma_k^2) - (D/2) log sigma_k^2 )

  (the normalising constant of each Gaussian matters because the variances differ);
* the estimate is the posterior mean z^_q = sum_k p(e_k | z') e_k;
* the hard index is the posterior argmax.

Two options say where the variances come from and how the bottleneck is trained.

``variance`` (default ``per_input``):
  ``per_input``  the encoder emits the K log-variances log sigma_k^2(x) of each position after
                 its D latent channels (``input_dim = code_dim + num_codes``, laid out
                 ``[z, log sigma_1^2 .. log sigma_K^2]``): the authors' code has the encoder
                 emit one value per codeword per input (``z_log_var`` of size K in
                 AlbertOh90/Soft-VQ-VAE; it parameterises log sigma there, log sigma^2 here).
  ``per_code``   K learned log-variances shared by all inputs (``input_dim = code_dim``).

``estimator`` (default ``straight_through``):
  ``straight_through``  the paper's objective, eq. (27) of the appendix::

        L = -log p(x | z^_q) + ||sg(z') - z^_q||^2 + beta ||z' - sg(z^_q)||^2

      returned as the terms ``codebook`` and ``commitment`` (row sums; ``codebook`` still
      reaches the encoder and the variances through the posterior weights, only the direct
      path through z' is stopped), and the decoder input is the straight-through
      z^_q = z + sg(z^_q - z): its value is the posterior mean, its gradient to the
      encoder's latent channels is the identity (none reaches the codebook or the variances
      from the decoder).
  ``posterior_mean``  the decoder receives z^_q itself, a differentiable function of the
      encoder, the codebook and the variances, and no latent loss is added (``terms`` is
      empty): the model trains end to end from the reconstruction alone. Together with
      ``variance=per_code`` and ``noise_std=0.1`` this is speechsq's first soft VQ
      (``quantizer=soft_vq_posterior_mean``).

Noise (``noise_std``): in training z' = z + n with n ~ N(0, noise_std^2 I), the "noisy
latent" of the paper's derivation; 0 by default because the authors' code adds none (the
line is commented out in their notebooks), so z' = z.

``beta``: the appendix leaves it open; 0.25 is van den Oord et al.'s value. (The authors' MNIST
notebook uses beta = 2.5 and weights the whole latent loss by 3, all as means.)

Evaluation output (``eval_output``): the paper's decoder input is always the soft posterior
mean. That is not a function of the hard index, so it cannot round-trip through
``decode(encode(z))``. speechsq's contract requires that round trip, so the default
``eval_output="hard"`` returns the codeword of the posterior argmax (no noise);
``eval_output="posterior_mean"`` gives the paper's soft output (no noise added at eval), for
which ``decode(encode(z))`` returns the argmax codeword and differs from the eval forward.
Indices are the same in both modes. ``ctx.sample`` at eval draws the index from the
posterior of a noisy latent (hard mode) instead of the argmax.

The codebook is initialised by "uniform unit scaling" as in the paper's training setup
(U(-sqrt(3/K), sqrt(3/K)), TensorFlow's rule for a (K, d) variable); ``init_log_variance``
is the initial value of the learned log-variances (``per_code``) or a constant added to the
encoder's (``per_input``; 0 by default).

Metrics: ``sigma2_codes`` (mean sigma_k^2 over codes and positions, how smooth the soft
assignment is), ``sigma2_min`` and ``sigma2_max``.
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
VARIANCES = ("per_input", "per_code")
ESTIMATORS = ("straight_through", "posterior_mean")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise QuantizerInputError(f"{name} must be one of {choices}, got {value!r}")
    return value


@register_quantizer("soft_vq")
class SoftVectorQuantizer(Quantizer):
    """Soft VQ-VAE bottleneck (see the module docstring)."""

    stochastic = True

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        variance: str = "per_input",
        estimator: str = "straight_through",
        beta: float = 0.25,
        noise_std: float = 0.0,
        init_log_variance: float = 0.0,
        eval_output: str = "hard",
        init: str = "unit_scaling",
    ):
        super().__init__(num_codes, code_dim)
        if not float(noise_std) >= 0:
            raise QuantizerInputError(f"noise_std must be >= 0, got {noise_std}")
        if not float(beta) >= 0:
            raise QuantizerInputError(f"beta (the commitment weight) must be >= 0, got {beta}")
        self.variance = _check_choice("variance", variance, VARIANCES)
        self.estimator = _check_choice("estimator", estimator, ESTIMATORS)
        self.eval_output = _check_choice("eval_output", eval_output, EVAL_OUTPUTS)
        self.beta = float(beta)
        self.noise_std = float(noise_std)
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim))
        if init == "unit_scaling":
            limit = math.sqrt(3.0 / num_codes)
            with torch.no_grad():
                self.codebook.uniform_(-limit, limit)
        else:
            init_codebook_(self.codebook, check_init_scheme(init))
        if self.variance == "per_code":
            # log sigma_k^2, one per codeword: unconstrained, so sigma_k^2 stays positive
            self.log_variance = nn.Parameter(torch.full((num_codes,), float(init_log_variance)))
        else:
            self.register_buffer("log_variance_offset", torch.tensor(float(init_log_variance)))

    @property
    def input_dim(self) -> int:
        return self.code_dim + (self.num_codes if self.variance == "per_input" else 0)

    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(N, input_dim) -> latent z (N, D) and log sigma_k^2, (N, K) per input or (1, K) per code."""
        z = rows[:, : self.code_dim]
        if self.variance == "per_code":
            return z, self.log_variance[None]
        return z, rows[:, self.code_dim :] + self.log_variance_offset

    def log_posterior(self, z: Tensor, log_variance: Tensor) -> Tensor:
        """log p(e_k | z) under N(z; e_k, sigma_k^2 I) likelihoods and a uniform prior, (N, K)."""
        sq = QF.squared_distances(z, self.codebook)
        log_lik = -0.5 * sq * torch.exp(-log_variance) - 0.5 * self.code_dim * log_variance
        return torch.log_softmax(log_lik, dim=-1)

    def add_noise(self, rows: Tensor) -> Tensor:
        return rows + self.noise_std * torch.randn_like(rows) if self.noise_std > 0 else rows

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        z, log_variance = self.split_rows(rows)
        sample_at_eval = not self.training and ctx.sample
        noisy = self.add_noise(z) if (self.training or sample_at_eval) else z
        log_probs = self.log_posterior(noisy, log_variance)
        probs = log_probs.exp()
        indices = sample_categorical(probs) if sample_at_eval else probs.detach().argmax(-1)
        estimate = probs @ self.codebook  # the Bayesian (posterior-mean) estimate z^_q
        terms: dict[str, Tensor] = {}
        if self.estimator == "straight_through":  # also at eval, so a validation loss includes it
            terms = {
                "codebook": (noisy.detach() - estimate).pow(2).sum(),
                "commitment": self.beta * (noisy - estimate.detach()).pow(2).sum(),
            }
        if self.training and self.estimator == "straight_through":
            z_q = z + (estimate - z).detach()
        elif self.training or self.eval_output == "posterior_mean":
            z_q = estimate
        else:
            z_q = self.lookup(indices)
        variances = log_variance.detach().exp()
        metrics = {
            "sigma2_codes": variances.mean(),
            "sigma2_min": variances.min(),
            "sigma2_max": variances.max(),
            "entropy": row_entropy(log_probs.detach(), probs.detach()).mean(),
        }
        return FlatQuantized(z_q=z_q, indices=indices, loss_terms=terms, probs=probs, metrics=metrics)
