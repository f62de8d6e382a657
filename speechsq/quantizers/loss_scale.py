"""Papers' loss weights in speechsq's loss convention.

speechsq sums every loss over the dimensions of an example and averages over the examples
("per example", :mod:`speechsq.quantizers.base`): the Gaussian reconstruction is
``SSE / (2 sigma^2)`` per example, a latent term ``weight * sum over latent positions``.
Papers often reduce both as *means*, which changes what a weight means: with ``P`` data
dimensions per example (e.g. 3 x 32 x 32 = 3072 for CIFAR10) and ``L`` latent positions per
example (8 x 8 = 64 for a factor-4 encoder),

    paper loss     = mean_d (x_d - x^_d)^2  +  w * mean_positions KL
    speechsq loss  = sum_d (x_d - x^_d)^2 / (2 sigma^2)  +  beta * sum_positions KL
                   = P / (2 sigma^2) * paper loss      when   beta = w * P / (2 sigma^2 L).

So the paper's ``w`` becomes ``beta = w * P / (2 sigma^2 L)`` with the fixed-variance
Gaussian likelihood ``gaussian_fixed(sigma2)`` (sigma^2 = 1/2 makes the reconstruction the
plain squared error, ``beta = w * P / L``). The two losses then differ by the constant factor
``P / (2 sigma^2)``: the same minimiser and, under Adam, the same training (up to Adam's
epsilon and any gradient clipping).

Reductions of the papers (``reduction``):

``mean``  reconstruction ``torch.mean((x^ - x)**2)`` over every element of the batch, KL
          summed over the K codes of a position and averaged over batch and positions. This is
          the EdVAE code (ituvisionlab/EdVAE ``models/basevq_trainer.py``: ``mse =
          torch.mean((reconst_img - img)**2)``; ``models/dirichlet_quantizer.py``:
          ``kl_weight * kl_divergence(posterior, prior).mean()``; ``models/gumbel_quantizer.py``
          (dVAE): ``kl_weight * sum_k q log(K q)`` then ``.mean()``), whose KL weights EdVAE App. D
          reports: EdVAE 5e-7 (CIFAR10) / 1e-7, dVAE 5e-5, GS-VQ-VAE 5e-6.
``sum``   both summed per example (speechsq's own convention): ``beta = w / (2 sigma^2)``.

:func:`commitment_weight` does the same for a VQ-VAE commitment reduced as ``F.mse_loss``
(a mean over the latent elements) next to a mean-reduced reconstruction.
"""

from __future__ import annotations

from speechsq.quantizers.base import QuantizerInputError

REDUCTIONS = ("sum", "mean")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise QuantizerInputError(f"{name} must be one of {REDUCTIONS}, got {reduction!r}")


def _positive(name: str, value) -> float:
    if value is None or not float(value) > 0:
        raise QuantizerInputError(f"{name} must be > 0, got {value}")
    return float(value)


def kl_weight_from_paper(
    weight: float,
    reduction: str = "mean",
    data_dims: int | None = None,
    latent_positions: int | None = None,
    sigma2: float = 0.5,
) -> float:
    """The KL weight ``beta`` (quantizer option) that reproduces a paper's KL weight ``weight``.

    ``reduction``: how the paper reduced its reconstruction and KL (module docstring);
    ``data_dims``: data dimensions per example (C x H x W) and ``latent_positions``: latent
    positions per example (h x w), both needed for ``mean``; ``sigma2``: the fixed decoder
    variance of speechsq's ``gaussian_fixed`` likelihood used with it (1/2: plain squared error).

    >>> kl_weight_from_paper(5e-7, "mean", data_dims=3 * 32 * 32, latent_positions=8 * 8)  # EdVAE, CIFAR10
    2.4e-05
    """
    _check_reduction("reduction", reduction)
    weight = float(weight)
    if not weight >= 0:
        raise QuantizerInputError(f"weight must be >= 0, got {weight}")
    per_squared_error = 1.0 / (2.0 * _positive("sigma2", sigma2))
    if reduction == "sum":
        return weight * per_squared_error
    dims = _positive("data_dims", data_dims)
    positions = _positive("latent_positions", latent_positions)
    return weight * dims * per_squared_error / positions


def commitment_weight(beta: float, reduction: str, code_dim: int, data_dims_per_position: int | None = None) -> float:
    """The weight of ``sum_i ||z_i - sg[z_q,i]||^2`` per example that reproduces a paper's ``beta``.

    ``sum``: ``beta``. ``mean`` (``beta * F.mse_loss(z, z_q)`` next to a reconstruction that is a
    mean over data elements): ``beta * P / D`` with ``P = data_dims_per_position`` data
    dimensions per latent position and ``D = code_dim``; the speech model (80 log-Mel bins, 2
    frames per latent frame, d_b = 64) gives 0.25 x 160 / 64 = 0.625.
    """
    if reduction not in REDUCTIONS:
        raise QuantizerInputError(f"commitment_reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "sum":
        if data_dims_per_position is not None:
            raise QuantizerInputError("data_dims_per_position only applies to commitment_reduction=mean")
        return float(beta)
    if data_dims_per_position is None or int(data_dims_per_position) < 1:
        raise QuantizerInputError(
            "commitment_reduction=mean needs data_dims_per_position >= 1: the data dimensions per latent "
            f"position (speech: n_mels x 2 frames = 160; images: channels x downsampling^2), got {data_dims_per_position}"
        )
    return float(beta) * int(data_dims_per_position) / int(code_dim)
