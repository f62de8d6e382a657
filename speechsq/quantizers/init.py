"""Codebook initialisation options shared by the quantizers."""

from __future__ import annotations

import torch
from torch import Tensor


INIT_SCHEMES = ("normal", "uniform")


@torch.no_grad()
def init_codebook_(codebook: Tensor, scheme: str = "uniform") -> Tensor:
    """Initialise a (K, D) codebook in place.

    ``uniform``: U(-1/K, 1/K) as in the VQ-VAE reference code; ``normal``: N(0, 1).
    K-means initialisation needs data; see :func:`kmeans_init_`.
    """
    k = codebook.shape[0]
    if scheme == "uniform":
        return codebook.uniform_(-1.0 / k, 1.0 / k)
    if scheme == "normal":
        return codebook.normal_()
    if scheme == "kmeans":  # filled from the first batch by kmeans_init_
        return codebook.normal_()
    raise ValueError(f"unknown codebook init {scheme!r}; choose one of {INIT_SCHEMES + ('kmeans',)}")


@torch.no_grad()
def kmeans_init_(codebook: Tensor, rows: Tensor, iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means on ``rows`` (N, D) written into ``codebook`` (K, D).

    Starts from K rows drawn without replacement (with replacement if N < K).
    """
    from speechsq.quantizers.functional import squared_distances

    k = codebook.shape[0]
    n = rows.shape[0]
    pick = torch.randperm(n, generator=generator, device="cpu")[:k] if n >= k else torch.randint(n, (k,), generator=generator)
    centres = rows[pick.to(rows.device)].clone()
    for _ in range(iters):
        assign = squared_distances(rows, centres).argmin(-1)
        sums = torch.zeros_like(centres).index_add_(0, assign, rows)
        counts = torch.bincount(assign, minlength=k).to(rows.dtype)
        nonempty = counts > 0
        centres[nonempty] = sums[nonempty] / counts[nonempty, None]
    codebook.copy_(centres)
    return codebook
