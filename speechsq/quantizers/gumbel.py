"""Categorical posteriors relaxed with Gumbel-softmax: `gumbel_vq` (GS-VQ-VAE) and `dvae`.

Both put a categorical posterior q(c | z) over the K codes and feed the decoder the
relaxed sample ``y @ codebook`` (Jang et al. 2017; Maddison et al. 2017), with the prior
p(c) = 1/K as in SQ-VAE Sec. 3 and EdVAE App. D. They differ only in where the logits
come from:

* ``gumbel_vq``: logits = -||z - b_k||^2, the negative squared distances to the
  codebook (the "GS-VQ-VAE" baseline of EdVAE App. D), so the encoder emits ``code_dim``
  channels;
* ``dvae``: the encoder emits the K logits directly (DALL-E's dVAE; EdVAE App. D.2:
  "the last dimensions of the encoders' outputs are equal to 512", the codebook size),
  so ``input_dim == num_codes`` while ``z_q`` has ``code_dim`` channels.

Loss (per position, summed over rows): ``beta * ctx.kl_weight * KL(q(c|z) || U(K))`` with
``KL = sum_k q_k (log q_k + log K) = log K - H(q)``. EdVAE App. D anneals this weight from
0 to an upper bound (5e-6 for GS-VQ-VAE, 5e-5 for dVAE, for their per-pixel image loss);
here the trainer's ``ctx.kl_weight`` carries the schedule and ``beta`` the upper bound.

Eval: the posterior argmax, ``z_q == codebook[index]`` exactly (so ``decode(encode(z))``
equals the eval forward); ``ctx.sample`` draws the index from q(c|z) instead.

The helpers at the top (:func:`kl_to_uniform`, :class:`CategoricalCodebookQuantizer`)
are shared with ``edvae``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from speechsq.quantizers import functional as QF
from speechsq.quantizers.base import FlatQuantized, Quantizer, QuantizerInputError, StepContext
from speechsq.quantizers.init import init_codebook_
from speechsq.quantizers.registry import register_quantizer


def kl_to_uniform(log_probs: Tensor, probs: Tensor | None = None) -> Tensor:
    """KL(q || U(K)) per row from log q (N, K): sum_k q_k (log q_k + log K) = log K - H(q)."""
    probs = log_probs.exp() if probs is None else probs
    return (probs * (log_probs + math.log(log_probs.shape[-1]))).sum(-1)


def row_entropy(log_probs: Tensor, probs: Tensor) -> Tensor:
    """H(q) per row from log q and q (spares the base class another (N, K) log)."""
    return -(probs * log_probs).sum(-1)


def sample_categorical(probs: Tensor) -> Tensor:
    """One hard draw per row from Categorical(probs) (N, K) -> (N,)."""
    return torch.multinomial(probs, 1).squeeze(-1)


class CategoricalCodebookQuantizer(Quantizer):
    """A codebook read through a relaxed categorical posterior.

    Subclasses give :meth:`posterior_log_probs` (log q(c|row), (N, K)) and
    :meth:`kl_terms` (the per-row KL of their posterior to their prior); this class does the
    Gumbel-softmax sample in training and the argmax (or a hard sample) at eval.
    """

    stochastic = True

    def __init__(self, num_codes: int, code_dim: int, beta: float = 1.0, hard: bool = False, init: str = "normal"):
        super().__init__(num_codes, code_dim)
        if not float(beta) >= 0:
            raise QuantizerInputError(f"beta (the KL weight's upper bound) must be >= 0, got {beta}")
        self.beta = float(beta)
        self.hard = bool(hard)
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim))
        # EdVAE App. D: "We initialize the codebook embeddings of these models using a
        # Gaussian normal distribution" (GS-VQ-VAE, dVAE and EdVAE).
        init_codebook_(self.codebook, init)

    def posterior_log_probs(self, rows: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def kl_terms(self, rows: Tensor, log_probs: Tensor, probs: Tensor) -> Tensor:
        """Per-row KL of the posterior to the prior, (N,). Default: q(c|z) against U(K)."""
        return kl_to_uniform(log_probs, probs)

    def extra_metrics(self, rows: Tensor, log_probs: Tensor) -> dict[str, Tensor]:
        return {}

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        log_probs = self.posterior_log_probs(rows)
        probs = log_probs.exp()
        if self.training:
            # Relaxed one-hot sample y; the decoder gets the convex combination y @ B, so the
            # codebook and the logits both receive gradients without a straight-through copy.
            y = QF.gumbel_softmax(log_probs, ctx.temperature, hard=self.hard)
            indices = y.detach().argmax(-1)
            z_q = y @ self.codebook
        else:
            indices = sample_categorical(probs) if ctx.sample else probs.argmax(-1)
            z_q = self.lookup(indices)
        kl = self.kl_terms(rows, log_probs, probs)
        terms = {"kl": self.beta * ctx.kl_weight * kl.sum()}
        metrics = {
            "kl_per_position": kl.detach().mean(),
            "entropy": row_entropy(log_probs.detach(), probs.detach()).mean(),
            "temperature": rows.new_tensor(float(ctx.temperature)),
        }
        metrics.update(self.extra_metrics(rows, log_probs))
        return FlatQuantized(z_q=z_q, indices=indices, loss_terms=terms, probs=probs, metrics=metrics)


@register_quantizer("gumbel_vq")
class GumbelVectorQuantizer(CategoricalCodebookQuantizer):
    """GS-VQ-VAE: Gumbel-softmax over the negative squared distances to the codebook.

    q(c = k | z) = softmax_k(-||z - b_k||^2); the encoder emits ``code_dim`` channels.
    Options: ``beta`` (KL weight upper bound, multiplied by ``ctx.kl_weight``), ``hard``
    (straight-through one-hot forward values), ``init`` (codebook init, default normal).
    """

    def posterior_log_probs(self, rows: Tensor) -> Tensor:
        return torch.log_softmax(-QF.squared_distances(rows, self.codebook), dim=-1)


@register_quantizer("dvae")
class DiscreteVAEQuantizer(CategoricalCodebookQuantizer):
    """dVAE: the encoder emits K logits; q(c|x) = softmax(logits), z_q = y @ codebook.

    ``input_dim == num_codes`` (the logits), ``z_q`` has ``code_dim`` channels.
    """

    @property
    def input_dim(self) -> int:
        return self.num_codes

    def posterior_log_probs(self, rows: Tensor) -> Tensor:
        return torch.log_softmax(rows, dim=-1)
