"""Frame distances of ABX, one definition with a compiled (numba) and a torch implementation.

Every distance is computed in float64 from the float32 frames and rounded to float32 (the
cosine's dot product once more before the arc cosine, as the reference clamps a float32),
so that the two implementations give the same float32 values (tests hold them equal) and
identical frames get identical distances wherever they sit, so exact ties stay ties.

* ``cosine`` (``angular``): ``acos(clamp(float32(a.b), -1, 1)) / pi`` of the (normalised)
  frames, the reference's angle; the dot products are one matrix product per tile. The
  angle is :func:`angle`, a polynomial written once for numba and once for torch (libm's
  scalar ``acos`` took 25 ns a call, 60 % of the kernel's time, and does not vectorise;
  this one takes 2 ns and, rounded to float32, is the correctly rounded angle).
* ``euclidean``: ``sqrt(sum (a - b)^2)``.
* ``kl``: ``sum p (log(p + eps) - log(q + eps))`` with ``eps = 1e-6``, as the reference.
* ``kl_symmetric``: the mean of both directions, ``0.5 sum (p - q)(log(p+eps) - log(q+eps))``.
* ``edit``: discrete units, the normalised edit distance (:mod:`speechsq.eval.dtw`).

Euclidean and KL distances are computed term by term (not through the expansion
``|a|^2 + |b|^2 - 2 a.b``, which gives tiny non-zero distances between identical frames and
would break ties the reference keeps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

if TYPE_CHECKING:  # torch is imported where the torch kernels run: the CPU path never loads it
    import torch

from speechsq.registry import Registry

KL_EPSILON = 1e-6

# Kernel codes (numba cannot dispatch on Python objects; the registry below maps names to these).
COSINE, EUCLIDEAN, KL, KL_SYMMETRIC, EDIT = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class SequenceDistance:
    """How two items are compared.

    code: the kernel's switch value for this distance.
    discrete: integer units compared with the edit distance instead of DTW of frames.
    requires_nonnegative: items with negative values are skipped (KL divergences).
    uses_logs: the kernels need ``log(frame + eps)`` next to the frames.
    """

    name: str
    code: int
    discrete: bool = False
    requires_nonnegative: bool = False
    uses_logs: bool = False


DISTANCES: Registry[SequenceDistance] = Registry("ABX distance")
for _distance in (
    SequenceDistance("cosine", COSINE),
    SequenceDistance("euclidean", EUCLIDEAN),
    SequenceDistance("kl", KL, requires_nonnegative=True, uses_logs=True),
    SequenceDistance("kl_symmetric", KL_SYMMETRIC, requires_nonnegative=True, uses_logs=True),
    SequenceDistance("edit", EDIT, discrete=True),
):
    DISTANCES.register(_distance.name)(_distance)
DISTANCE_ALIASES = {"angular": "cosine", "euclidian": "euclidean", "symmetric_kl": "kl_symmetric", "levenshtein": "edit"}


def get_distance(name: str) -> SequenceDistance:
    return DISTANCES.get(DISTANCE_ALIASES.get(name, name))


def distance_choices() -> list[str]:
    return sorted(set(DISTANCES.names()) | set(DISTANCE_ALIASES))


# --------------------------------------------------------------------------- arc cosine

# asin(u) = u + u^3 P(u^2) for u^2 in [0, 1/4]: a least-squares Chebyshev fit of degree 9 to
# the exact function (40-digit arithmetic), converted to powers of u^2. The arc cosine built
# on it is within 1.4e-14 of the exact value; rounded to float32 it never differed from
# numpy's arccos in 4 M random inputs. (A float32 evaluation was 0.9 ns per value faster but
# moved the 12,000-item benchmark 7e-5 points away from the reference, against 1.4e-6.)
_ASIN_POLY = (
    0.16666666666661878, 0.07500000003782792, 0.0446428522243056, 0.03038219162499965,
    0.02236588258570047, 0.01744362753189393, 0.013173368371721953, 0.01573348070669647,
    -0.0030636398806416316, 0.02801751371546608,
)
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9 = _ASIN_POLY
_ONE32 = np.float32(1.0)


@njit(cache=True, nogil=True, inline="always")
def angle(c):
    """``acos(c) / pi`` for a float32 ``c`` in [-1, 1], computed in float64, as float32.

    Branch-free, so that loops over it vectorise: |c| <= 1/2: pi/2 - asin(c); else
    acos(|c|) = 2 asin(u) with u = sqrt((1 - |c|) / 2), and pi minus that for negative c.
    One polynomial serves both ranges.
    """
    x = np.float64(c)
    a = abs(x)
    small = a <= 0.5
    u = x if small else math.sqrt((1.0 - a) * 0.5)
    t = u * u
    asin = u + u * t * (_C0 + t * (_C1 + t * (_C2 + t * (_C3 + t * (_C4 + t * (_C5 + t * (
        _C6 + t * (_C7 + t * (_C8 + t * _C9)))))))))
    if small:
        radians = math.pi / 2 - asin
    else:
        radians = math.pi - 2.0 * asin if x < 0 else 2.0 * asin
    return np.float32(radians / math.pi)


def angle_torch(c: torch.Tensor) -> torch.Tensor:
    """:func:`angle` in torch operations (float64 inside), equal to it bit for bit."""
    import torch

    x = c.double()
    a = x.abs()
    small = a <= 0.5
    u = torch.where(small, x, torch.sqrt((1.0 - a) * 0.5))
    t = u * u
    p = torch.full_like(t, _C9)
    for coefficient in reversed(_ASIN_POLY[:-1]):
        p = coefficient + t * p
    asin = u + u * t * p
    large = torch.where(x < 0, math.pi - 2.0 * asin, 2.0 * asin)
    radians = torch.where(small, math.pi / 2 - asin, large)
    return (radians / math.pi).float()


# --------------------------------------------------------------------------- compiled tile


@njit(cache=True, nogil=True)
def frame_distance_tile(code, rows, cols_t, row_logs, col_logs_t, out):
    """``out[i, j] = d(rows[i], cols_t[:, j])`` as float32.

    rows: ``(R, D)`` float64 frames; cols_t: ``(D, C)`` float64 frames, transposed so that
    the matrix product and the loops over columns read memory in order.
    ``row_logs``/``col_logs_t``: ``log(frame + eps)`` in the same layouts (KL only).
    """
    n_rows, dim = rows.shape
    n_cols = cols_t.shape[1]
    if code == COSINE:
        dots = np.dot(rows, cols_t)
        for i in range(n_rows):
            for j in range(n_cols):
                c = np.float32(dots[i, j])
                c = _ONE32 if c > _ONE32 else c
                c = -_ONE32 if c < -_ONE32 else c
                out[i, j] = angle(c)
        return
    acc = np.empty(n_cols, np.float64)
    for i in range(n_rows):
        acc[:] = 0.0
        for k in range(dim):
            if code == EUCLIDEAN:
                for j in range(n_cols):
                    diff = rows[i, k] - cols_t[k, j]
                    acc[j] += diff * diff
            elif code == KL:
                for j in range(n_cols):
                    acc[j] += rows[i, k] * (row_logs[i, k] - col_logs_t[k, j])
            else:  # KL_SYMMETRIC
                for j in range(n_cols):
                    acc[j] += (rows[i, k] - cols_t[k, j]) * (row_logs[i, k] - col_logs_t[k, j])
        for j in range(n_cols):
            if code == EUCLIDEAN:
                out[i, j] = np.float32(math.sqrt(acc[j]))
            elif code == KL:
                out[i, j] = np.float32(acc[j])
            else:
                out[i, j] = np.float32(0.5 * acc[j])


# --------------------------------------------------------------------------- torch


def frame_distances_torch(code: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, n, D)`` x ``(B, m, D)`` float64 frames -> ``(B, n, m)`` float32 distances."""
    import torch

    if code == COSINE:
        return angle_torch(torch.bmm(a, b.transpose(1, 2)).float().clamp(-1.0, 1.0))
    if code == EUCLIDEAN:
        return torch.sqrt(((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)).float()
    la, lb = torch.log(a + KL_EPSILON), torch.log(b + KL_EPSILON)
    if code == KL:
        return (a[:, :, None, :] * (la[:, :, None, :] - lb[:, None, :, :])).sum(-1).float()
    if code == KL_SYMMETRIC:
        terms = (a[:, :, None, :] - b[:, None, :, :]) * (la[:, :, None, :] - lb[:, None, :, :])
        return (0.5 * terms.sum(-1)).float()
    raise ValueError(f"no frame distance for kernel code {code}")
