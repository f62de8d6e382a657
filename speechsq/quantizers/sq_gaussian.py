"""Gaussian SQ-VAE (Takida et al. 2022, Sec. 3.2, Table 1, eq. 6-8) and its fixed-variance baseline.

Stochastic dequantization ``p(z_i | Z_q) = N(z_q,i, Sigma_phi)`` (eq. 6) and its Bayes
inverse, the stochastic quantizer (eq. 7)::

    P(z_q,i = b_k | Z) = softmax_k( -(b_k - z_i)^T Sigma_phi^{-1} (b_k - z_i) / 2 )

Training (Algorithm 1 and App. E: "we use Z = Z_q instead of sampling Z"): a Gumbel-softmax
relaxed one-hot ``w`` at the trainer's temperature gives the soft code ``z_q = w @ B``
that goes to the decoder; the latent part of eq. (8) is

    R(Z, Z_q) - H(P(Z_q | Z)),   R = sum_i (z_i - z_q,i)^T Sigma_phi^{-1} (z_i - z_q,i) / 2,

returned as the terms ``regulariser`` and ``neg_entropy`` (= sum p log p). The codebook,
the encoder and Sigma_phi all get gradients through ``w`` (no stop-gradient, no EMA).
Eval: the posterior argmax and the exact code (``lookup``), or a posterior sample with
``StepContext(sample=True)``. ``StepContext.kl_weight`` is not applied: the paper trains
SQ-VAE without warm-up, and scaling R or H would change the self-annealing it relies on.

The parameterisations of Sigma_phi (Table 1) are strategy objects in a small registry,
selected by the registered quantizer names:

==========  ====================================  ======================  ==============
name        Sigma_phi                             extra encoder channels  log sigma^2
==========  ====================================  ======================  ==============
sq_gauss1   sigma_phi^2 I        (I)              0                       s
sq_gauss2   sigma_phi^2(x) I     (II) per example 1                       s + mean_i e_i
sq_gauss3   sigma_phi,i^2(x) I   (III) per pos.   1                       s + e_i
sq_gauss4   diag(sigma_phi,i^2)  (IV) per pos+dim D                       s + e_i (D)
sq_fixed    sigma_q^2 I (fixed; Roy et al. / Williams et al. baseline)    log sigma2, frozen
==========  ====================================  ======================  ==============

``s`` is one trainable scalar, ``e`` the encoder's extra channels (appended after the
``code_dim`` latent channels). Log-variance = trainable offset + encoder output follows the
authors' speech implementation; its initial value log(10) is theirs too (the paper does
not state one). The authors' *image* code combines them differently, sigma^2 = e^e + e^s
(for (I), with no encoder term, 1 + e^s), initialised at s = log 20 (CIFAR10, CelebA) or
log 10 (MNIST, Fashion-MNIST): option ``variance_form=additive`` (see ``VARIANCE_FORMS``);
the column above is the default ``variance_form=scaled``. For (II), "one variance per example" (Table 1; App. E.2 explains why the
paper skips it for speech: it depends on the segment length), the encoder's per-position
log-variance channel is averaged over each example's *valid* positions before
quantization (the authors' image code averages the log-variance map the same way), so
padding never leaks into it.

Every distance is O(N * K): the posterior is formed from (N, D) x (D, K) products only
(one product of augmented matrices; see ``VarianceParameterisation.augmented``), and the
training step after it is a single autograd node with hand-written gradients
(``_RelaxedPosteriorCode``) that works on row blocks on CPU. Both are checked against
plain autograd / torch.distributions in ``tests/test_quantizers_sq.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from speechsq.quantizers import functional as QF
from speechsq.quantizers.base import FlatQuantized, Quantizer, QuantizerInputError, StepContext, latent_to_rows, rows_to_latent
from speechsq.quantizers.init import check_init_scheme, init_codebook_, kmeans_on_first_batch_
from speechsq.quantizers.registry import register_quantizer
from speechsq.registry import Registry

#: initial log sigma_phi^2 of the authors' speech code (``log_var_q_scalar.fill_(10.0).log_()``).
LOG_SIGMA2_INIT = math.log(10.0)
#: smallest variance used in the precision, as in the reference code (keeps 1/sigma^2 finite).
_MIN_LOG_VARIANCE = math.log(1e-10)


# --------------------------------------------------------------------------------------
# Sigma_phi parameterisations (Table 1)
# --------------------------------------------------------------------------------------
class VarianceParameterisation:
    """How Sigma_phi is built from the trainable offset and the encoder's extra channels.

    Isotropic by default: ``log_variance`` returns (1, 1) or (N, 1); only (IV) returns
    (N, D) and overrides :meth:`augmented` for its diagonal Mahalanobis distance.
    """

    #: Table 1 label, for docs and repr.
    label = "I"
    #: whether the global offset is a trainable parameter (False only for ``sq_fixed``).
    trainable_offset = True
    #: whether the variance is one per example (type II), pooled over positions.
    per_example = False

    def extra_channels(self, code_dim: int) -> int:
        return 0

    def head(self, extra: Tensor) -> Tensor:
        """(N, E) extra encoder channels -> the encoder's log-variance term e, broadcastable to (N, D).

        (I) has no encoder term: e = 0, a (1, 1) constant."""
        return extra.new_zeros(1, 1)

    def log_variance(self, extra: Tensor, offset: Tensor, form: str = "scaled") -> Tensor:
        """log sigma^2 from the extra encoder channels and the trainable offset s (see ``VARIANCE_FORMS``)."""
        return VARIANCE_FORMS.get(form)(self.head(extra), offset.reshape(1, 1))

    def augmented(self, z: Tensor, codebook: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, codes) whose product ``rows @ codes.T`` is the eq. (7) log-posterior up to a row constant.

        -p/2 ||z - b_k||^2 = p z.b_k - p/2 ||b_k||^2 - p/2 ||z||^2. The last term is the same
        for every k and is dropped (the softmax, i.e. the posterior, is unchanged); the rest
        is ONE product of augmented matrices, [p z, -p/2] @ [b_k, ||b_k||^2]^T, so the only
        (N, K) tensor formed is the result, and the gradients for z, p and the codebook flow
        back through (N, D+1) and (K, D+1) tensors.
        """
        p = precision.expand(z.shape[0], 1)
        return torch.cat([p * z, -0.5 * p], 1), torch.cat([codebook, codebook.pow(2).sum(-1, keepdim=True)], 1)

    def logits(self, z: Tensor, codebook: Tensor, precision: Tensor) -> Tensor:
        """Eq. (7) unnormalised log-posterior (N, K), up to a per-row constant."""
        rows, codes = self.augmented(z, codebook, precision)
        return rows @ codes.t()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"


class PerPositionVariance(VarianceParameterisation):
    """(III) sigma_phi,i^2(x) I: one extra encoder channel per position."""

    label = "III"

    def extra_channels(self, code_dim: int) -> int:
        return 1

    def head(self, extra: Tensor) -> Tensor:
        return extra


class PerExampleVariance(PerPositionVariance):
    """(II) sigma_phi^2(x) I: the per-position channel averaged over each example (see module doc)."""

    label = "II"
    per_example = True


class DiagonalVariance(PerPositionVariance):
    """(IV) diag(sigma_phi,i^2(x)): D extra encoder channels per position."""

    label = "IV"

    def extra_channels(self, code_dim: int) -> int:
        return code_dim

    def augmented(self, z: Tensor, codebook: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
        # -1/2 sum_j p_j (z_j - b_kj)^2 = (p z).b_k - 1/2 p.(b_k^2) - const(row):
        # one product of augmented matrices [p z, -p/2] @ [b_k, b_k^2]^T (inner size 2D)
        return torch.cat([precision * z, -0.5 * precision], 1), torch.cat([codebook, codebook.pow(2)], 1)


class FixedVariance(VarianceParameterisation):
    """sigma_q^2 I with sigma_q^2 a fixed hyperparameter (SQ-VAE Sec. 3.3 / Table 2 baseline)."""

    label = "fixed"
    trainable_offset = False


#: How the encoder term e and the trainable scalar s combine into log sigma_phi^2 (option ``variance_form``).
#: ``scaled``:   sigma^2 = e^s * e^e, log sigma^2 = s + e: the authors' speech code
#:               (sony/sqvae speech/model.py, ``log_var_q = z[..., D:] + log_var_q_scalar``); for (I) s alone.
#: ``additive``: sigma^2 = e^e + e^s: the authors' image code (sony/sqvae vision/model.py,
#:               ``param_q = log_var_q.exp() + log_param_q_scalar.exp()``); for (I) e = 0, so 1 + e^s.
VARIANCE_FORMS: Registry = Registry("variance form")
VARIANCE_FORMS.register("scaled")(lambda head, offset: head + offset)
VARIANCE_FORMS.register("additive")(torch.logaddexp)

VARIANCE_PARAMETERISATIONS: Registry[VarianceParameterisation] = Registry("Sigma_phi parameterisation")
for _key, _param in {
    "I": VarianceParameterisation(),
    "II": PerExampleVariance(),
    "III": PerPositionVariance(),
    "IV": DiagonalVariance(),
    "fixed": FixedVariance(),
}.items():
    VARIANCE_PARAMETERISATIONS.register(_key)(_param)


# --------------------------------------------------------------------------------------
# shared by the Gaussian and vMF SQ quantizers
# --------------------------------------------------------------------------------------
def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum_k a_nk b_nk as (N, 1) (vecdot: 5x faster than a batched matmul on CPU row blocks)."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


#: on CPU the training node works on row blocks of about this many (N, K) entries (4 MiB of
#: float32; measured best of 2^16..2^24 at K=4096 on this machine), so the
#: dozen elementwise passes of a step run on cache-resident blocks instead of streaming
#: (N, K) matrices through memory (and page-faulting fresh ones in) each time.
CPU_BLOCK_ENTRIES = 1 << 20


def _row_blocks(n_rows: int, num_codes: int, device: torch.device, block_rows: int | None) -> list[slice]:
    if block_rows is None:
        # one block on accelerators: there, extra kernel launches cost more than memory traffic
        block_rows = n_rows if device.type != "cpu" else max(1, CPU_BLOCK_ENTRIES // num_codes)
    return [slice(i, min(i + block_rows, n_rows)) for i in range(0, n_rows, block_rows)]


class _RelaxedPosteriorCode(torch.autograd.Function):
    """The training step of an SQ quantizer after the encoder, as one autograd node.

    logits = rows @ codes^T                         (eq. 7 / eq. 13; callers augment rows/codes)
    w      = softmax((logits + g) / tau)            (Gumbel-softmax, g ~ Gumbel(0, 1))
    z_q    = w @ mix_codes                          (the soft code for the decoder)
    neg_entropy = sum_n sum_k p log p,  p = softmax(logits)

    Outputs (z_q, neg_entropy, index of the sampled code, sum_n p_n); only z_q and
    neg_entropy carry gradients. The gradients are exactly those of the formulas above
    (a test checks them against plain autograd), written out so that every (N, K) pass
    happens block by block on rows, with in-place updates: the memory is O(N * K) (w, p and
    log p are kept for the backward pass) and no (N, D, K) tensor is ever formed.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, codes: Tensor, mix_codes: Tensor, temperature: float, block_rows: int | None):
        n = rows.shape[0]
        inv_tau = 1.0 / temperature
        z_q = rows.new_empty(n, mix_codes.shape[1])
        indices = torch.empty(n, dtype=torch.long, device=rows.device)
        per_row = rows.new_empty(n, 1)
        code_mass = rows.new_zeros(codes.shape[0])
        blocks = _row_blocks(n, codes.shape[0], rows.device, block_rows)
        saved = []
        for blk in blocks:
            logits = rows[blk] @ codes.t()
            # Gumbel noise in place: u -> log(-log u) = -g, then (logits + g) / tau
            weights = torch.rand_like(logits).log_().neg_().log_()
            weights.mul_(-inv_tau).add_(logits, alpha=inv_tau)
            peak, idx = weights.max(-1, keepdim=True)  # Gumbel-max: the sampled code
            indices[blk] = idx.squeeze(1)
            weights.sub_(peak).exp_()
            weights.div_(weights.sum(-1, keepdim=True))
            torch.mm(weights, mix_codes, out=z_q[blk])
            # posterior and its log, in place on the logits block
            logits.sub_(logits.amax(-1, keepdim=True))
            probs = logits.exp()
            norm = probs.sum(-1, keepdim=True)
            probs.div_(norm)
            log_probs = logits.sub_(norm.log_())
            per_row[blk] = _row_dot(probs, log_probs)
            code_mass += probs.sum(0)
            saved.append((weights, probs, log_probs))
        ctx.save_for_backward(rows, codes, mix_codes, per_row)
        ctx.blocks, ctx.saved, ctx.inv_tau = blocks, saved, inv_tau
        ctx.mark_non_differentiable(indices, code_mass)
        return z_q, per_row.sum(), indices, code_mass

    @staticmethod
    def backward(ctx, grad_z_q: Tensor, grad_neg_entropy: Tensor, _grad_indices, _grad_mass):
        if ctx.saved is None:
            raise RuntimeError("the SQ posterior node frees its buffers in backward; a second backward (retain_graph) is not supported")
        rows, codes, mix_codes, per_row = ctx.saved_tensors
        need_rows, need_codes, need_mix = ctx.needs_input_grad[:3]
        grad_rows = torch.empty_like(rows) if need_rows else None
        grad_codes = torch.zeros_like(codes) if need_codes else None
        grad_mix = torch.zeros_like(mix_codes) if need_mix else None
        scaled_grad_z_q = grad_z_q * ctx.inv_tau
        for blk, (weights, probs, log_probs) in zip(ctx.blocks, ctx.saved):
            # relaxed sample: dL/dlogits = w * (dL/dw - <w, dL/dw>) / tau, dL/dw = dL/dz_q @ mix^T
            grad_logits = scaled_grad_z_q[blk] @ mix_codes.t()
            grad_logits.sub_(_row_dot(weights, grad_logits)).mul_(weights)
            # entropy: d/dl_nj sum_k p log p = p_nj (log p_nj - sum_k p_nk log p_nk)
            grad_logits.addcmul_(log_probs.sub_(per_row[blk]).mul_(grad_neg_entropy), probs)
            if need_rows:
                torch.mm(grad_logits, codes, out=grad_rows[blk])
            if need_codes:
                grad_codes.addmm_(grad_logits.t(), rows[blk])
            if need_mix:
                grad_mix.addmm_(weights.t(), grad_z_q[blk])
        ctx.saved = None
        return grad_rows, grad_codes, grad_mix, None, None


def relaxed_posterior_code(
    rows: Tensor, codes: Tensor, mix_codes: Tensor, temperature: float, block_rows: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training step: (soft code z_q, sum p log p, sampled index, sum_n p_n); see the node above."""
    if not temperature > 0:
        raise QuantizerInputError(f"Gumbel-softmax temperature must be > 0, got {temperature}")
    return _RelaxedPosteriorCode.apply(rows, codes, mix_codes, float(temperature), block_rows)


def hard_posterior_code(logits: Tensor, ctx: StepContext, lookup) -> tuple[Tensor, Tensor]:
    """Eval step: the posterior argmax (or a sample if ``ctx.sample``) and exactly ``lookup(index)``."""
    if ctx.sample:
        indices = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(1)
    else:
        indices = logits.argmax(-1)
    return lookup(indices), indices


def posterior_metrics(neg_entropy: Tensor, code_mass: Tensor, n_rows: int) -> dict[str, Tensor]:
    """The base's soft-posterior metrics, from what the SQ step already has (no extra (N, K) pass).

    ``entropy``: mean posterior entropy; ``soft_perplexity``: perplexity of the average posterior.
    """
    return {"entropy": -neg_entropy.detach() / n_rows, "soft_perplexity": QF.perplexity_from_counts(code_mass.detach())}


def posterior_and_neg_entropy(logits: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(logits) and sum_n sum_k p log p (= minus the summed entropies), by autograd."""
    log_probs = torch.log_softmax(logits, -1)
    probs = log_probs.exp()
    return probs, (probs * log_probs).sum()


# --------------------------------------------------------------------------------------
# the quantizer
# --------------------------------------------------------------------------------------
class GaussianSQ(Quantizer):
    """Gaussian SQ-VAE quantizer; the registered subclasses fix ``variance_type``.

    Options: ``log_sigma2_init`` (initial log of the trainable variance offset s; log 10),
    ``init`` (codebook: ``normal`` as in the reference code, ``uniform`` or ``kmeans``),
    ``variance_form`` (``scaled``: sigma^2 = e^s e^e, the speech code; ``additive``:
    sigma^2 = e^e + e^s, the image code; see ``VARIANCE_FORMS``).
    """

    stochastic = True
    variance_type = "I"

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        log_sigma2_init: float = LOG_SIGMA2_INIT,
        init: str = "normal",
        variance_form: str = "scaled",
    ):
        super().__init__(num_codes, code_dim)
        if not math.isfinite(float(log_sigma2_init)):
            raise QuantizerInputError(f"log_sigma2_init must be finite, got {log_sigma2_init}")
        if variance_form not in VARIANCE_FORMS:
            raise QuantizerInputError(f"unknown variance_form {variance_form!r}; choose one of {', '.join(VARIANCE_FORMS.names())}")
        self.variance_form = variance_form
        self.variance = VARIANCE_PARAMETERISATIONS.get(self.variance_type)
        self.init_scheme = check_init_scheme(init)
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim))
        init_codebook_(self.codebook, init)
        self.register_buffer("kmeans_done", torch.tensor(init != "kmeans"))
        offset = torch.tensor(float(log_sigma2_init))
        if self.variance.trainable_offset:
            self.log_sigma2 = nn.Parameter(offset)
        else:
            self.register_buffer("log_sigma2", offset)

    @property
    def input_dim(self) -> int:
        return self.code_dim + self.variance.extra_channels(self.code_dim)

    # ----- the mathematics -----------------------------------------------------------
    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(N, input_dim) rows -> latent z (N, D) and log sigma_phi^2 broadcastable to (N, D)."""
        z, extra = rows[:, : self.code_dim], rows[:, self.code_dim :]
        return z, self.variance.log_variance(extra, self.log_sigma2, self.variance_form)

    def posterior_logits(self, rows: Tensor) -> Tensor:
        """Eq. (7) log-posterior over the K codes, up to a per-row constant (N, K)."""
        z, log_var = self.split_rows(rows)
        return self.variance.logits(z, self.codebook, self._precision(log_var))

    @staticmethod
    def _precision(log_var: Tensor) -> Tensor:
        return torch.exp(-log_var.clamp_min(_MIN_LOG_VARIANCE))

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        z, log_var = self.split_rows(rows)
        if self.training and self.init_scheme == "kmeans":
            kmeans_on_first_batch_(self.codebook.data, self.kmeans_done, z)
        precision = self._precision(log_var)
        aug_rows, aug_codes = self.variance.augmented(z, self.codebook, precision)
        if self.training:
            z_q, neg_entropy, indices, code_mass = relaxed_posterior_code(aug_rows, aug_codes, self.codebook, ctx.temperature)
        else:
            logits = aug_rows @ aug_codes.t()
            z_q, indices = hard_posterior_code(logits, ctx, self.lookup)
            probs, neg_entropy = posterior_and_neg_entropy(logits)
            code_mass = probs.detach().sum(0)
        terms = {
            "regulariser": 0.5 * (precision * (z - z_q).pow(2)).sum(),
            "neg_entropy": neg_entropy,
        }
        metrics = {
            "sigma2_phi": log_var.detach().exp().expand(z.shape[0], -1).mean(),
            **posterior_metrics(neg_entropy, code_mass, z.shape[0]),
        }
        return FlatQuantized(z_q=z_q, indices=indices, loss_terms=terms, metrics=metrics)

    # ----- (II): one variance per example ----------------------------------------------
    def forward(self, z: Tensor, mask: Tensor | None = None, ctx: StepContext | None = None):
        if self.variance.per_example:
            z = self._share_variance_within_examples(self._check_latent(z), mask)
        return super().forward(z, mask, ctx)

    def _share_variance_within_examples(self, z: Tensor, mask: Tensor | None) -> Tensor:
        """Replace the log-variance channel by its mean over each example's valid positions."""
        rows, shape = latent_to_rows(z)
        valid = self._check_mask(mask, shape, z.device)
        b = shape[0]
        channel = rows[:, self.code_dim :].reshape(b, -1)
        if valid is None:
            pooled = channel.mean(1, keepdim=True)
        else:
            valid = valid.reshape(b, -1)
            total = torch.where(valid, channel, torch.zeros_like(channel)).sum(1, keepdim=True)
            pooled = total / valid.sum(1, keepdim=True).clamp_min(1).to(channel.dtype)
        channel = pooled.expand_as(channel).reshape(-1, 1)
        return rows_to_latent(torch.cat([rows[:, : self.code_dim], channel], 1), shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variance={self.variance.label}, variance_form={self.variance_form}"


@register_quantizer("sq_gauss1")
class GaussianSQ1(GaussianSQ):
    """Gaussian SQ-VAE (I): Sigma_phi = sigma_phi^2 I, one trainable scalar."""

    variance_type = "I"


@register_quantizer("sq_gauss2")
class GaussianSQ2(GaussianSQ):
    """Gaussian SQ-VAE (II): one variance per example (encoder emits 1 extra channel, pooled)."""

    variance_type = "II"


@register_quantizer("sq_gauss3")
class GaussianSQ3(GaussianSQ):
    """Gaussian SQ-VAE (III): one variance per position (encoder emits 1 extra channel)."""

    variance_type = "III"


@register_quantizer("sq_gauss4")
class GaussianSQ4(GaussianSQ):
    """Gaussian SQ-VAE (IV): a diagonal covariance per position (encoder emits D extra channels)."""

    variance_type = "IV"


@register_quantizer("sq_fixed")
class FixedVarianceSQ(GaussianSQ):
    """Stochastic quantization with a fixed sigma_q^2 (option ``sigma2``; no paper default, 1.0 here).

    The baseline of SQ-VAE Sec. 3.3 / Table 2 ("Quantization w/ fixed sigma_q^2").
    """

    variance_type = "fixed"

    def __init__(self, num_codes: int, code_dim: int, sigma2: float = 1.0, init: str = "normal"):
        if not (float(sigma2) > 0 and math.isfinite(float(sigma2))):
            raise QuantizerInputError(f"sq_fixed needs a finite sigma2 > 0, got {sigma2}")
        super().__init__(num_codes, code_dim, log_sigma2_init=math.log(float(sigma2)), init=init)
