"""Gaussian decoder likelihoods p(x | z) = N(x_hat, sigma^2 I) (SQ-VAE eq. 2 and eq. 8).

With ``D`` valid data dimensions in an example and ``SSE = ||x - x_hat||^2``::

    -log p(x | z) = SSE / (2 sigma^2) + D/2 log sigma^2 + D/2 log(2 pi)

Three ways to set sigma^2, all dropping the parameter-free ``D/2 log 2 pi``:

``gaussian_trainable``  sigma^2 is a trainable scalar (SQ-VAE eq. 8, log-parameterised so
                        it stays positive).
``gaussian_closed_form``  sigma^2 is replaced by its optimum for the current batch,
                        sigma^2* = MSE, which turns the NLL into ``D/2 (log MSE + 1)``. This
                        is what the SQ-VAE reference code trains with (``mse_loss_arelbo``,
                        after Takida et al. 2021) and the **default for the SQ family** in
                        ``speechsq/conf/quantizer/sq_*.yaml``. The ``+ 1`` keeps its value
                        equal to the trainable NLL at its optimum; it has no gradient.
                        Under data parallelism the MSE is that of each process's shard.
``gaussian_fixed``      a fixed sigma^2 (VQ-VAE, after Eloff et al. 2019; the paper grid is
                        1e-2, 1e-1, 1, 10). The ``D/2 log sigma^2`` term is a constant kept
                        only so that the logged values of all three are comparable.

All three return the loss "per example" (summed over valid dimensions, averaged over the
batch) and log ``mse`` (per valid dimension) and ``sigma2``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from speechsq.likelihoods.base import LIKELIHOODS, Likelihood, LikelihoodOutput, masked_sum


class _Gaussian(Likelihood):
    """Shared reduction: squared error summed over valid dims, and the count of those dims."""

    def _squared_error(self, decoder_out: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if decoder_out.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: decoder output {tuple(decoder_out.shape)} and target "
                f"{tuple(target.shape)} must have the same shape"
            )
        # float32 also under autocast: sums over thousands of dimensions overflow fp16
        diff = decoder_out.float() - target.float()
        sse, count = masked_sum(diff.pow(2), mask)
        if mask is not None and count.item() == 0:  # (no host sync when nothing is masked)
            raise ValueError(f"{type(self).__name__}: the mask leaves no valid data dimension")
        return sse, count


@LIKELIHOODS.register("gaussian_trainable")
class TrainableVarianceGaussian(_Gaussian):
    """N(x_hat, sigma^2 I) with a trainable scalar ``log sigma^2`` (SQ-VAE eq. 8)."""

    def __init__(self, init_sigma2: float = 1.0):
        super().__init__()
        if init_sigma2 <= 0:
            raise ValueError(f"init_sigma2 must be > 0, got {init_sigma2}")
        self.log_sigma2 = nn.Parameter(torch.tensor(math.log(init_sigma2)))

    def nll(self, decoder_out: Tensor, target: Tensor, mask: Tensor | None = None) -> LikelihoodOutput:
        sse, count = self._squared_error(decoder_out, target, mask)
        batch = target.shape[0]
        log_sigma2 = self.log_sigma2.float()
        recon = 0.5 * sse * torch.exp(-log_sigma2) / batch
        log_norm = 0.5 * count * log_sigma2 / batch
        metrics = {"mse": (sse / count).detach(), "sigma2": log_sigma2.detach().exp()}
        return LikelihoodOutput(loss=recon + log_norm, terms={"recon": recon, "log_norm": log_norm}, metrics=metrics)


@LIKELIHOODS.register("gaussian_closed_form")
class ClosedFormVarianceGaussian(_Gaussian):
    """N(x_hat, sigma^2 I) at the batch-optimal sigma^2 = MSE: NLL = D/2 (log MSE + 1)."""

    def __init__(self, min_sigma2: float = 1e-12):
        super().__init__()
        # log(0) for a perfect reconstruction would be -inf; the floor keeps it finite
        self.min_sigma2 = float(min_sigma2)

    def nll(self, decoder_out: Tensor, target: Tensor, mask: Tensor | None = None) -> LikelihoodOutput:
        sse, count = self._squared_error(decoder_out, target, mask)
        batch = target.shape[0]
        mse = (sse / count).clamp_min(self.min_sigma2)
        loss = 0.5 * count / batch * (torch.log(mse) + 1.0)
        metrics = {"mse": (sse / count).detach(), "sigma2": mse.detach()}
        return LikelihoodOutput(loss=loss, terms={"recon": loss}, metrics=metrics)


@LIKELIHOODS.register("gaussian_fixed")
class FixedVarianceGaussian(_Gaussian):
    """N(x_hat, sigma^2 I) with a fixed sigma^2 (VQ-VAE: ||x - x_hat||^2 / (2 sigma^2))."""

    def __init__(self, sigma2: float = 1.0):
        super().__init__()
        if sigma2 <= 0:
            raise ValueError(f"sigma2 must be > 0, got {sigma2}")
        self.sigma2 = float(sigma2)

    def nll(self, decoder_out: Tensor, target: Tensor, mask: Tensor | None = None) -> LikelihoodOutput:
        sse, count = self._squared_error(decoder_out, target, mask)
        batch = target.shape[0]
        recon = 0.5 * sse / self.sigma2 / batch
        log_norm = (0.5 * count * math.log(self.sigma2) / batch).detach()
        metrics = {"mse": (sse / count).detach(), "sigma2": sse.new_tensor(self.sigma2)}
        return LikelihoodOutput(loss=recon + log_norm, terms={"recon": recon, "log_norm": log_norm}, metrics=metrics)
