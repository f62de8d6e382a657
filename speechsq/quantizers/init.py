"""Codebook initialisation options shared by the quantizers.

``uniform``  U(-1/K, 1/K), the VQ-VAE reference code (and van Niekerk et al.'s speech VQ-VAE).
``normal``   N(0, 1), the SQ-VAE reference code's codebook.
``kmeans``   Lloyd's k-means on the first *training* batch (opt-in; vector-quantize-pytorch
             and vqtorch offer it against dead codes). Until that batch arrives the codebook
             holds N(0, 1) values, so an untrained quantizer is still usable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from speechsq.quantizers import functional as QF

INIT_SCHEMES = ("normal", "uniform", "kmeans")


def check_init_scheme(scheme: str) -> str:
    """Fail early (at construction) on an unknown scheme, listing the known ones."""
    if scheme not in INIT_SCHEMES:
        from speechsq.quantizers.base import QuantizerInputError

        raise QuantizerInputError(f"unknown codebook init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    return scheme


@torch.no_grad()
def init_codebook_(codebook: Tensor, scheme: str = "uniform") -> Tensor:
    """Initialise a (K, D) codebook in place.

    ``uniform``: U(-1/K, 1/K) as in the VQ-VAE reference code; ``normal``: N(0, 1).
    K-means initialisation needs data; see :func:`kmeans_init_` / :func:`kmeans_on_first_batch_`.
    """
    check_init_scheme(scheme)
    k = codebook.shape[0]
    if scheme == "uniform":
        return codebook.uniform_(-1.0 / k, 1.0 / k)
    # "normal", and the placeholder for "kmeans" until the first training batch
    return codebook.normal_()


@torch.no_grad()
def kmeans_plus_plus_(centres: Tensor, rows: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre is a row drawn with
    probability proportional to its squared distance to the nearest centre chosen so far.

    O(N) memory and O(N * K * D) time; far less prone than uniform seeding to start two
    centres in one cluster (and so to leave a cluster without a code).
    """
    k, n = centres.shape[0], rows.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres[0] = rows[first]
    nearest = (rows - centres[0]).pow(2).sum(-1)
    for j in range(1, k):
        total = nearest.sum()
        weights = nearest / total if total > 0 else torch.full_like(nearest, 1.0 / n)
        pick = int(torch.multinomial(weights.cpu(), 1, generator=generator))
        centres[j] = rows[pick]
        nearest = torch.minimum(nearest, (rows - centres[j]).pow(2).sum(-1))
    return centres


@torch.no_grad()
def kmeans_init_(codebook: Tensor, rows: Tensor, iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means on ``rows`` (N, D) written into ``codebook`` (K, D).

    Seeded with k-means++; empty clusters keep their seed. O(N * K) memory per iteration.
    """
    k = codebook.shape[0]
    rows = rows.to(codebook.dtype)
    centres = kmeans_plus_plus_(torch.empty_like(codebook), rows, generator)
    for _ in range(iters):
        assign = QF.squared_distances(rows, centres).argmin(-1)
        sums = torch.zeros_like(centres).index_add_(0, assign, rows)
        counts = torch.bincount(assign, minlength=k).to(rows.dtype)
        nonempty = counts > 0
        centres[nonempty] = sums[nonempty] / counts[nonempty, None]
    codebook.copy_(centres)
    return codebook


@torch.no_grad()
def kmeans_on_first_batch_(codebook: Tensor, done: Tensor, rows: Tensor) -> bool:
    """Run k-means once, on the first training batch; returns True when it ran now.

    ``done`` is a bool buffer of the quantizer (so the decision is checkpointed). Under
    data parallelism every process sees a different batch: rank 0's centres are broadcast
    so that the replicas start from the same codebook (the usual DDP k-means hang/drift
    of other libraries cannot happen because every rank takes the same branch).
    """
    if bool(done):
        return False
    kmeans_init_(codebook, rows.detach())
    QF.broadcast_(codebook)
    done.fill_(True)
    return True
