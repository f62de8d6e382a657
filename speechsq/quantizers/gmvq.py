"""`gmvq` / `gmvq_entropy`: Gaussian-mixture VQ trained with the ALBO (Yan et al. 2024).

Equation numbers refer to "Gaussian Mixture Vector Quantization with Aggregated
Categorical Posterior" (``gmvq_aggregated_posterior.txt``).

Encoder channels: eq. (15) has the encoder emit a proxy latent z_hat (L = code_dim values)
*and* raw weights r_hat of the same size, activated as w = softplus(r_hat). So
``input_dim == 2 * code_dim``, laid out as ``[z_hat, r_hat]`` along the channel axis.

Forward, per latent position:

* logits l_c = -1/2 sum_i w_i (z_hat_i - mu_c,i)^2, a Mahalanobis-like distance with the
  per-position diagonal precision w (eq. 16); q(c|x) = softmax(l) (eq. 17);
* sigma_c^2(x) = (||z_hat - mu_c||^2 / L) / (2 sigma^2) (eq. 18), with ``sigma2`` the
  generative model's latent variance sigma_z^2;
* training: c_q = straight-through Gumbel-softmax one-hot from log q(c|x) with
  ``ctx.temperature`` (Sec. 3.3.2, "j = argmax Softmax_tau(log q(c|x) + g)");
  z = c_q^T M + sigma_c(x) * eps, eps ~ N(0, I) (the reparameterisation after eq. 18).
  Gradients reach the codebook through the logits, through c_q^T M and through
  sigma_c: no stop-gradient, commitment loss or EMA;
* eval: "no noise is added ... latents are directly sampled from the codebook" (Sec. 5.1):
  z = mu_argmax exactly (``ctx.sample`` draws c ~ q(c|x) instead of the argmax).

Loss (eq. 13-14 without the reconstruction term, which belongs to the model):

    gamma * ( E_{q(z|x,c)} ||z - mu_c||^2  +  beta * KL(q_B(c) || p(c)) )

* E||z - mu_c||^2 = L * sigma_c^2(x) = ||z_hat - mu_c||^2 / (2 sigma^2) is the exact
  expectation over eps of the sampled code's term (lower variance than one draw of eps);
* q_B(c) = (1/|B|) sum_{x in B} q(c|x) is the minibatch-aggregated posterior (eq. 12)
  over all valid latent positions of the batch, p(c) = 1/K, so
  KL = sum_c q_B(c) log(K q_B(c)) = log K - H(q_B). Every position carries its own
  categorical variable, so in the row-sum convention the term is N * KL for N valid rows
  (the base divides by the B examples). The KL is also multiplied by ``ctx.kl_weight``
  (1 unless the trainer warms it up).

Hyperparameters (App. A.3: gamma = sigma_x^2 / sigma_z^2, beta = 2 sigma_z^2; Sec. 5.1):
``gmvq`` fixes beta = 1 (so sigma_z^2 = 1/2 and eq. 18's denominator 2 sigma^2 = 1) and
tunes gamma; the paper does not print its gamma, so the default is gamma = 1.
``gmvq_entropy`` is "GM-VQ + Entropy": the same objective "tuned with higher entropy
regularization (beta > 1) and the fixed gamma"; the paper gives no value, the default here
is beta = 5. The codebook is initialised by k-means on the first training batch (Sec. 5.1,
"initialized using K-means clustering ... following Esser et al.").

Data parallel: q_B is the aggregate of *this process's* minibatch only; it is not
all-reduced. Under DDP the optimised quantity is therefore the mean over processes of
KL(q_{B_r} || p), which by convexity of the KL is >= the KL of the global aggregate (it
pushes each shard, not just the union, towards uniform use). Use a larger per-process
batch if that matters. The k-means initialisation is broadcast from rank 0 so replicas
start from one codebook.

Metrics: ``sigma2_c`` (mean sigma_c^2 of the chosen code, the uncertainty that shrinks as
z_hat approaches its codeword), ``weight`` (mean softplus weight), ``kl_aggregate``
(unweighted KL(q_B || p)), ``temperature``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechsq.quantizers import functional as QF
from speechsq.quantizers.base import FlatQuantized, Quantizer, QuantizerInputError, StepContext
from speechsq.quantizers.gumbel import row_entropy, sample_categorical
from speechsq.quantizers.init import check_init_scheme, init_codebook_, kmeans_on_first_batch_
from speechsq.quantizers.registry import register_quantizer


def aggregated_posterior(probs: Tensor) -> Tensor:
    """q_B(c) = mean over the minibatch rows of q(c|x) (eq. 12), (N, K) -> (K,)."""
    return probs.mean(0)


def aggregated_kl_to_uniform(probs: Tensor) -> Tensor:
    """KL(q_B || U(K)) = sum_c q_B(c) log(K q_B(c)) for the aggregate of (N, K) posteriors."""
    q_b = aggregated_posterior(probs)
    return (q_b * (q_b.clamp_min(1e-30).log() + math.log(q_b.shape[-1]))).sum()


@register_quantizer("gmvq")
class GaussianMixtureQuantizer(Quantizer):
    """GM-VQ with the ALBO objective (see the module docstring)."""

    stochastic = True

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        gamma: float = 1.0,
        beta: float = 1.0,
        sigma2: float = 0.5,
        init: str = "kmeans",
    ):
        super().__init__(num_codes, code_dim)
        for name, value in (("gamma", gamma), ("beta", beta)):
            if not float(value) >= 0:
                raise QuantizerInputError(f"{name} must be >= 0, got {value}")
        if not float(sigma2) > 0:
            raise QuantizerInputError(f"sigma2 (the latent variance of eq. 18) must be > 0, got {sigma2}")
        self.gamma = float(gamma)
        self.beta = float(beta)
        self.sigma2 = float(sigma2)
        self.init_scheme = check_init_scheme(init)
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim))
        init_codebook_(self.codebook, init)
        # k-means needs data: done on the first training batch, then never again (a buffer,
        # so a resumed checkpoint does not re-initialise).
        self.register_buffer("kmeans_done", torch.tensor(init != "kmeans"))

    @property
    def input_dim(self) -> int:
        return 2 * self.code_dim  # [z_hat, r_hat], eq. (15)

    def split(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 2L) encoder rows -> proxy latent z_hat (N, L) and softplus weights w (N, L), eq. (15)."""
        z_hat, raw = rows.split(self.code_dim, dim=-1)
        return z_hat, F.softplus(raw)

    def log_posterior(self, z_hat: Tensor, weights: Tensor) -> Tensor:
        """log q(c|x), (N, K): log-softmax of eq. (16)'s logits (eq. 17)."""
        logits = -0.5 * QF.weighted_squared_distances(z_hat, self.codebook, weights)
        return torch.log_softmax(logits, dim=-1)

    def code_variances(self, z_hat: Tensor) -> Tensor:
        """sigma_c^2(x) for every code, (N, K): eq. (18)."""
        return QF.squared_distances(z_hat, self.codebook) / (self.code_dim * 2.0 * self.sigma2)

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        z_hat, weights = self.split(rows)
        if self.training and self.init_scheme == "kmeans":
            kmeans_on_first_batch_(self.codebook.data, self.kmeans_done, z_hat)  # broadcast from rank 0
        log_probs = self.log_posterior(z_hat, weights)
        probs = log_probs.exp()
        sigma2_all = self.code_variances(z_hat)
        if self.training:
            c_q = QF.gumbel_softmax(log_probs, ctx.temperature, hard=True)
            indices = c_q.detach().argmax(-1)
            mu_c = c_q @ self.codebook
            sigma2_c = (c_q * sigma2_all).sum(-1)
            # clamp: d sqrt(x)/dx is infinite at 0 (z_hat exactly on its codeword)
            z = mu_c + sigma2_c.clamp_min(1e-12).sqrt()[:, None] * torch.randn_like(mu_c)
        else:
            indices = sample_categorical(probs) if ctx.sample else probs.argmax(-1)
            sigma2_c = sigma2_all.gather(1, indices[:, None]).squeeze(1)
            z = self.lookup(indices)
        kl_b = aggregated_kl_to_uniform(probs)
        n = rows.shape[0]
        terms = {
            # E_eps ||z - mu_c||^2 = L sigma_c^2(x), summed over positions
            "latent": self.gamma * self.code_dim * sigma2_c.sum(),
            "kl": self.gamma * self.beta * ctx.kl_weight * n * kl_b,
        }
        metrics = {
            "sigma2_c": sigma2_c.detach().mean(),
            "weight": weights.detach().mean(),
            "kl_aggregate": kl_b.detach(),
            "entropy": row_entropy(log_probs.detach(), probs.detach()).mean(),
            "temperature": rows.new_tensor(float(ctx.temperature)),
        }
        return FlatQuantized(z_q=z, indices=indices, loss_terms=terms, probs=probs, metrics=metrics)


@register_quantizer("gmvq_entropy")
class GaussianMixtureEntropyQuantizer(GaussianMixtureQuantizer):
    """"GM-VQ + Entropy": GM-VQ with a stronger aggregated-entropy weight, beta > 1 (Sec. 5.1)."""

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        gamma: float = 1.0,
        beta: float = 5.0,
        sigma2: float = 0.5,
        init: str = "kmeans",
    ):
        if not float(beta) > 1.0:
            raise QuantizerInputError(f"gmvq_entropy is the beta > 1 variant of gmvq (Sec. 5.1); got beta={beta}, use gmvq instead")
        super().__init__(num_codes, code_dim, gamma=gamma, beta=beta, sigma2=sigma2, init=init)
