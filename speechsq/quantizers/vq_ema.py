"""`vq_ema` and `vq_ema_reset`: VQ-VAE with an exponential-moving-average codebook.

The codebook is not trained by gradients (the second term of SQ-VAE eq. 4 is replaced by
EMA, as the paper notes); the only loss is the commitment ``beta ||z - sg[z_q]||^2``,
beta = 0.25, and the EMA decay gamma = 0.99 (SQ-VAE App. E, after van den Oord et al.).

Per training batch, with n_k the number of rows assigned to code k and S_k their sum, two
update rules (option ``update``; each a function in ``EMA_UPDATES``):

``used`` (default)::

    N_k <- gamma N_k + (1 - gamma) n_k          m_k <- gamma m_k + (1 - gamma) S_k
    b_k <- m_k / N~_k   only for the codes with n_k > 0,
    N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j     (Laplace smoothing)

    N and m start at zero, so after its first use a code sits exactly at the (smoothed) mean
    of its rows, as with a bias-corrected EMA. Only codes used in this batch are rewritten:
    Laplace smoothing changes N~_k of every code, so writing all of them would move unused
    codes (towards the origin) although no data was assigned to them. A code used in an
    earlier batch but not in this one keeps its vector bit for bit (its N_k still decays).

``all`` (van Niekerk et al. 2020, ``VQEmbeddingEMA`` of bshall/ZeroSpeech ``model.py``, the
    VQ-VAE baseline of SQ-VAE Tables 9-10), exactly::

    N_k <- gamma N_k + (1 - gamma) n_k
    N_k <- (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j    (the smoothed count is *stored*)
    m_k <- gamma m_k + (1 - gamma) S_k
    b_k <- m_k / N_k    for every code k,

    with N starting at zero and m at the initial codebook. Unused codes are rewritten too:
    their m_k decays by gamma per batch while N_k settles at a small smoothed value, so a
    code that is never chosen first jumps far out (m_k(0) / N_k with N_k ~ eps) and then
    decays towards the origin.

Commitment reduction (option ``commitment_reduction``): speechsq's losses are sums per
example (see ``speechsq.quantizers.base``), and ``sum`` gives ``beta * sum_i ||z_i -
sg[z_q,i]||^2`` per example. The reference implementations reduce the commitment with
``F.mse_loss`` (a mean over the latent elements) next to a reconstruction that is a mean
over data elements. ``mean`` reproduces that balance exactly in speechsq's per-example-sum
convention: with ``P`` the data dimensions per latent position (``data_dims_per_position``)
and ``D`` = ``code_dim``, the per-example commitment is

    beta * (P / D) * sum_i ||z_i - sg[z_q,i]||^2,

i.e. ``P x T`` times the reference's ``beta * mse(z, z_q)`` for ``T`` latent positions,
the same factor ``P x T`` (the data dimensions of an example) that turns a mean-reduced
reconstruction into speechsq's per-example sum. For the speech model (80 log-Mel bins, two
frames per latent frame, d_b = 64) P / D = 160 / 64 = 2.5: the reference commitment is
2.5 x beta = 0.625 in speechsq's convention, 2.5 times stronger relative to the
reconstruction than ``commitment_reduction=sum`` with the same beta. With the speech model's
``loss_normalization=dimension`` (the loss divided by the ``P x T`` data dimensions), the
loss *value* equals the reference's.

``n`` and ``S`` are summed over data-parallel processes (``functional.all_reduce_sum_``)
before the update, so every replica applies the same update and the codebooks stay equal.
Updates happen only in training mode, from the valid (unmasked) rows the base passes in.

`vq_ema_reset` adds the code reset of SQ-VAE App. E.1.2 (after Williams et al. 2020):
every 20th batch, find the most- and least-used codes over the last 20 batches; if the
least-used one was used less than 3% as often as the most-used one, re-draw it from
N(b_most, s^2 I) with s^2 = 0.01. The draw is broadcast from rank 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from speechsq.quantizers import functional as QF
from speechsq.quantizers.base import FlatQuantized, Quantizer, QuantizerInputError, StepContext
from speechsq.quantizers.init import check_init_scheme, init_codebook_, kmeans_on_first_batch_
from speechsq.quantizers.loss_scale import commitment_weight
from speechsq.quantizers.registry import register_quantizer
from speechsq.registry import Registry

# ----- EMA update rules ---------------------------------------------------------------------
#: (quantizer, per-code counts n (K,), per-code row sums S (K, D)) -> None; updates in place.
EmaUpdate = Callable[["EMAVectorQuantizer", Tensor, Tensor], None]
EMA_UPDATES: Registry[EmaUpdate] = Registry("EMA update rule")


def laplace_smoothed(counts: Tensor, eps: float) -> Tensor:
    """(N_k + eps) / (sum_j N_j + K eps) * sum_j N_j: no code has a zero count, the total is kept."""
    total = counts.sum()
    return (counts + eps) / (total + counts.shape[0] * eps) * total


@EMA_UPDATES.register("used")
@torch.no_grad()
def _update_used_codes(q: "EMAVectorQuantizer", counts: Tensor, sums: Tensor) -> None:
    q.ema_count.mul_(q.decay).add_(counts, alpha=1.0 - q.decay)
    q.ema_sum.mul_(q.decay).add_(sums, alpha=1.0 - q.decay)
    smoothed = laplace_smoothed(q.ema_count, q.eps)
    used = counts > 0
    q.codebook[used] = q.ema_sum[used] / smoothed[used, None]


@EMA_UPDATES.register("all")
@torch.no_grad()
def _update_all_codes(q: "EMAVectorQuantizer", counts: Tensor, sums: Tensor) -> None:
    q.ema_count.mul_(q.decay).add_(counts, alpha=1.0 - q.decay)
    q.ema_count.copy_(laplace_smoothed(q.ema_count, q.eps))
    q.ema_sum.mul_(q.decay).add_(sums, alpha=1.0 - q.decay)
    q.codebook.copy_(q.ema_sum / q.ema_count[:, None])


@register_quantizer("vq_ema")
class EMAVectorQuantizer(Quantizer):
    """Nearest-neighbour quantizer with an EMA codebook.

    Options: ``beta`` (commitment), ``decay`` (EMA gamma), ``eps`` (Laplace smoothing),
    ``init`` (``uniform`` as in van Niekerk et al.'s speech VQ-VAE, ``normal``, ``kmeans``),
    ``update`` (``used`` | ``all``: which codes the EMA rewrites), ``commitment_reduction``
    (``sum`` | ``mean``) and ``data_dims_per_position`` (for ``mean``); see the module docstring.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        init: str = "uniform",
        update: str = "used",
        commitment_reduction: str = "sum",
        data_dims_per_position: int | None = None,
    ):
        super().__init__(num_codes, code_dim)
        if not 0.0 <= float(decay) < 1.0:
            raise QuantizerInputError(f"EMA decay must lie in [0, 1), got {decay}")
        if not float(eps) > 0.0:
            raise QuantizerInputError(f"Laplace smoothing eps must be > 0, got {eps}")
        if update not in EMA_UPDATES:
            raise QuantizerInputError(f"unknown EMA update {update!r}; choose one of {', '.join(EMA_UPDATES.names())}")
        self.beta = float(beta)
        self.decay = float(decay)
        self.eps = float(eps)
        self.update_rule = update
        self._apply_update = EMA_UPDATES.get(update)
        self.commitment_reduction = commitment_reduction
        self.data_dims_per_position = None if data_dims_per_position is None else int(data_dims_per_position)
        #: the weight actually applied to the per-example sum of squared commitment errors
        self.commitment_weight = commitment_weight(beta, commitment_reduction, code_dim, data_dims_per_position)
        self.init_scheme = check_init_scheme(init)
        codebook = torch.empty(num_codes, code_dim)
        init_codebook_(codebook, init)
        # buffers, not parameters: the optimiser must not touch an EMA codebook
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.zeros(num_codes))
        # `all` follows the reference, whose sum statistic starts at the initial codebook
        self.register_buffer("ema_sum", codebook.clone() if update == "all" else torch.zeros(num_codes, code_dim))
        self.register_buffer("kmeans_done", torch.tensor(init != "kmeans"))

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        if self.training and self.init_scheme == "kmeans":
            if kmeans_on_first_batch_(self.codebook, self.kmeans_done, rows) and self.update_rule == "all":
                self.ema_sum.copy_(self.codebook)
        indices = QF.squared_distances(rows, self.codebook).argmin(-1)
        codes = self.codebook[indices]  # a copy: later in-place EMA writes cannot reach the graph
        terms = {"commitment": self.commitment_weight * (rows - codes).pow(2).sum()}
        metrics: dict[str, Tensor] = {}
        if self.training:
            counts = self._ema_update_(rows.detach(), indices)
            metrics.update(self._after_update_(counts))
        z_q = rows + (codes - rows).detach() if self.training else codes
        return FlatQuantized(z_q=z_q, indices=indices, loss_terms=terms, metrics=metrics)

    @torch.no_grad()
    def _ema_update_(self, rows: Tensor, indices: Tensor) -> Tensor:
        """One EMA step; returns the batch's per-code counts (summed over processes)."""
        k = self.num_codes
        stats = rows.new_zeros(k, 1 + self.code_dim)
        stats[:, 0] = torch.bincount(indices, minlength=k).to(rows.dtype)
        stats[:, 1:].index_add_(0, indices, rows)
        QF.all_reduce_sum_(stats)  # one collective for counts and sums
        counts, sums = stats[:, 0], stats[:, 1:]
        self._apply_update(self, counts, sums)
        return counts

    def _after_update_(self, counts: Tensor) -> dict[str, Tensor]:
        """Hook for subclasses (code reset); returns extra metrics."""
        return {}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, update={self.update_rule}, commitment_weight={self.commitment_weight:g}"


@register_quantizer("vq_ema_reset")
class EMAResetVectorQuantizer(EMAVectorQuantizer):
    """`vq_ema` plus the SQ-VAE App. E.1.2 code reset.

    Options (besides those of `vq_ema`): ``reset_every`` (20 batches), ``reset_threshold``
    (0.03 of the most-used code's usage), ``reset_variance`` (s^2 = 0.01).
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        init: str = "uniform",
        update: str = "used",
        commitment_reduction: str = "sum",
        data_dims_per_position: int | None = None,
        reset_every: int = 20,
        reset_threshold: float = 0.03,
        reset_variance: float = 0.01,
    ):
        super().__init__(
            num_codes, code_dim, beta=beta, decay=decay, eps=eps, init=init, update=update,
            commitment_reduction=commitment_reduction, data_dims_per_position=data_dims_per_position,
        )  # fmt: skip
        if int(reset_every) < 1:
            raise QuantizerInputError(f"reset_every must be >= 1 batch, got {reset_every}")
        if not float(reset_variance) >= 0.0:
            raise QuantizerInputError(f"reset_variance must be >= 0, got {reset_variance}")
        self.reset_every = int(reset_every)
        self.reset_threshold = float(reset_threshold)
        self.reset_std = math.sqrt(float(reset_variance))
        self.register_buffer("usage", torch.zeros(num_codes))
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("resets_done", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _after_update_(self, counts: Tensor) -> dict[str, Tensor]:
        self.usage += counts  # counts are already summed over processes
        self.batches_seen += 1
        if int(self.batches_seen) % self.reset_every == 0:
            self._reset_least_used_code_()
            self.usage.zero_()
        return {"code_resets": self.resets_done.float()}

    @torch.no_grad()
    def _reset_least_used_code_(self) -> None:
        most, least = int(self.usage.argmax()), int(self.usage.argmin())
        if not self.usage[least] < self.reset_threshold * self.usage[most]:
            return
        redraw = self.codebook[most] + self.reset_std * torch.randn_like(self.codebook[most])
        QF.broadcast_(redraw)  # every replica takes rank 0's draw
        self.codebook[least] = redraw
        # keep the EMA ratio m/N consistent with the new position, so the next EMA step
        # starts from it instead of from the abandoned one
        self.ema_sum[least] = redraw * self.ema_count[least]
        self.resets_done += 1
