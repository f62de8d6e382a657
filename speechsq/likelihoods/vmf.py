"""von Mises-Fisher decoder for categorical data (SQ-VAE Section 3.4, eqs. 10-11, 14, 24).

Each category ``c`` of ``V`` is a fixed unit vector ``w_c`` on the sphere S^{F-1}:

``one_hot``  ``w_c = e_c`` (F = V, mutually orthogonal; the 19 CelebAMask-HQ classes on S^18)
``circle``   ``w_c = [cos a_c, sin a_c]``, ``a_c = pi (c + 1) / V`` (F = 2; the paper's
             ``a_l = pi l / L`` for ``l = 1..L``: 256 grey levels in order on a half circle,
             so that neighbouring intensities are neighbouring directions)

The decoder output ``f_d`` of each data dimension is normalised onto S^{F-1}; with the
trainable concentration ``kappa`` (log-parameterised),

    p(v_d | Z_q) = vMF(f_d, kappa) = C_F(kappa) exp(kappa f_d^T v_d)                (11)
    log C_F(kappa) = (F/2 - 1) log kappa - log I_{F/2-1}(kappa) - F/2 log(2 pi)       (18)
    -log p(x | z)  = sum_d [ -kappa w_{x_d}^T f_d ] - D log C_F(kappa)                (14, 24)

and the category probabilities used to decode are P(x_d = c) = softmax_c(kappa w_c^T f_d) (10).
The log-Bessel function is evaluated stably through the exponentially scaled
``scipy.special.ive``: log I_nu(k) = log ive(nu, k) + k, with its exact derivative
I_{nu+1}/I_nu + nu/k for autograd.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special
from torch import Tensor, nn

from speechsq.likelihoods.base import LIKELIHOODS, Likelihood, LikelihoodOutput, masked_sum
from speechsq.likelihoods.categorical import check_category_target, split_channels

DIRECTION_SETS = ("one_hot", "circle")


def _log_iv_numpy(nu: float, kappa: np.ndarray) -> np.ndarray:
    kappa = np.atleast_1d(kappa)
    scaled = np.asarray(special.ive(nu, kappa))
    with np.errstate(divide="ignore"):
        out = np.log(scaled) + kappa
    # ive underflows to 0 only for kappa << nu; there the first series term is exact to
    # relative O(kappa^2 / nu): I_nu(k) ~ (k/2)^nu / Gamma(nu + 1)
    tiny = scaled <= 0
    if np.any(tiny):
        k = kappa[tiny]
        out[tiny] = nu * np.log(k / 2.0) - special.gammaln(nu + 1.0)
    return out


def _dlog_iv_numpy(nu: float, kappa: np.ndarray) -> np.ndarray:
    """d/dk log I_nu(k) = I_{nu+1}(k) / I_nu(k) + nu / k."""
    kappa = np.atleast_1d(kappa)
    num, den = special.ive(nu + 1.0, kappa), special.ive(nu, kappa)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), kappa / (2.0 * (nu + 1.0)))
    return ratio + nu / kappa


class _LogBesselIv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kappa: Tensor, nu: float) -> Tensor:
        k = kappa.detach().double().cpu().numpy()
        ctx.save_for_backward(kappa)
        ctx.nu = nu
        out = _log_iv_numpy(nu, k).reshape(k.shape)
        return torch.from_numpy(out).to(device=kappa.device, dtype=kappa.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (kappa,) = ctx.saved_tensors
        k = kappa.detach().double().cpu().numpy()
        d = _dlog_iv_numpy(ctx.nu, k).reshape(k.shape)
        return grad * torch.from_numpy(d).to(device=kappa.device, dtype=kappa.dtype), None


def log_bessel_iv(nu: float, kappa: Tensor) -> Tensor:
    """log I_nu(kappa) for kappa > 0, differentiable in kappa, stable for large kappa."""
    if not torch.is_tensor(kappa):
        kappa = torch.as_tensor(kappa, dtype=torch.float64)
    if bool((kappa <= 0).any()):
        raise ValueError("log_bessel_iv needs kappa > 0")
    return _LogBesselIv.apply(kappa, float(nu))


def vmf_log_normalizer(kappa: Tensor, dim: int) -> Tensor:
    """log C_F(kappa) of the vMF density on S^{F-1} in R^F (SQ-VAE eq. 18), F = ``dim``."""
    nu = dim / 2.0 - 1.0
    return nu * torch.log(kappa) - log_bessel_iv(nu, kappa) - dim / 2.0 * math.log(2.0 * math.pi)


def category_directions(num_categories: int, kind: str) -> Tensor:
    """(V, F) unit vectors w_c for the categories."""
    if kind == "one_hot":
        return torch.eye(num_categories)
    if kind == "circle":
        angles = math.pi * torch.arange(1, num_categories + 1, dtype=torch.float64) / num_categories
        return torch.stack([angles.cos(), angles.sin()], dim=1).float()
    raise ValueError(f"unknown direction set {kind!r}; choose one of {DIRECTION_SETS}")


@LIKELIHOODS.register("vmf")
class VMFLikelihood(Likelihood):
    """vMF decoder over fixed category directions with a trainable concentration kappa."""

    def __init__(self, num_categories: int, directions: str = "one_hot", init_kappa: float = 1.0, trainable: bool = True):
        super().__init__()
        if int(num_categories) < 2:
            raise ValueError(f"num_categories must be >= 2, got {num_categories}")
        if init_kappa <= 0:
            raise ValueError(f"init_kappa must be > 0, got {init_kappa}")
        self.num_categories = int(num_categories)
        self.directions_kind = directions
        self.register_buffer("directions", category_directions(self.num_categories, directions))
        log_kappa = torch.tensor(math.log(init_kappa))
        if trainable:
            self.log_kappa = nn.Parameter(log_kappa)
        else:
            self.register_buffer("log_kappa", log_kappa)

    @property
    def sphere_dim(self) -> int:
        """F: the dimension of the space the sphere S^{F-1} lives in."""
        return self.directions.shape[1]

    @property
    def kappa(self) -> Tensor:
        return self.log_kappa.float().exp()

    def out_channels(self, data_channels: int) -> int:
        return data_channels * self.sphere_dim

    def mean_directions(self, decoder_out: Tensor) -> Tensor:
        """(B, C * F, *S) -> unit vectors (B, C, F, *S)."""
        b = decoder_out.shape[0]
        c = decoder_out.shape[1] // self.sphere_dim
        f = decoder_out.reshape(b, c, self.sphere_dim, *decoder_out.shape[2:]).float()
        return F.normalize(f, dim=2, eps=1e-8)

    def category_logits(self, decoder_out: Tensor) -> Tensor:
        """kappa w_c^T f_d, (B, C, V, *S): the logits of eq. 10."""
        f = self.mean_directions(decoder_out)
        return self.kappa * torch.einsum("vf,bcf...->bcv...", self.directions, f)

    def probs(self, decoder_out: Tensor) -> Tensor:
        """P(x_d = c | Z_q) = softmax_c(kappa w_c^T f_d) (eq. 10), (B, C, V, *S)."""
        return self.category_logits(decoder_out).softmax(2)

    def nll(self, decoder_out: Tensor, target: Tensor, mask: Tensor | None = None) -> LikelihoodOutput:
        who = type(self).__name__
        target = check_category_target(target, self.num_categories, who)
        f = F.normalize(split_channels(decoder_out, target, self.sphere_dim, who).float(), dim=2, eps=1e-8)
        v = self.directions[target].movedim(-1, 2)  # (B, C, F, *S)
        cosine = (f * v).sum(2)  # (B, C, *S)
        total_cos, count = masked_sum(cosine, mask)
        if mask is not None and count.item() == 0:
            raise ValueError(f"{who}: the mask leaves no valid data dimension")
        batch = target.shape[0]
        kappa = self.kappa
        recon = -kappa * total_cos / batch
        log_norm = -count * vmf_log_normalizer(kappa, self.sphere_dim) / batch
        logits = kappa * torch.einsum("vf,bcf...->bcv...", self.directions, f)
        wrong, _ = masked_sum((logits.argmax(2) != target).float(), mask)
        metrics = {"kappa": kappa.detach(), "pixel_error": (wrong / count).detach()}
        return LikelihoodOutput(loss=recon + log_norm, terms={"recon": recon, "log_norm": log_norm}, metrics=metrics)

    def mean(self, decoder_out: Tensor) -> Tensor:
        """The mode of eq. 10: the category whose direction is closest to f_d, (B, C, *S)."""
        return self.category_logits(decoder_out).argmax(2)

    def encoder_input(self, target: Tensor) -> Tensor:
        """The data projected onto the sphere, V = (w_{x_d})_d, (B, C * F, *S) (Algorithm 2)."""
        target = check_category_target(target, self.num_categories, type(self).__name__)
        v = self.directions[target].movedim(-1, 2)
        return v.reshape(target.shape[0], -1, *target.shape[2:])
