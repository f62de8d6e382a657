"""The latent manipulations of SQ-VAE Table 2 (Sec. 5.1), on any quantizer with one codebook.

**Neighbor-k** "replac[es] latent vector elements by the k-th nearest codebook elements":
every code index c of a code map becomes the index of the k-th nearest *other* codebook
element to b_c. The paper does not say whether b_c counts as its own first neighbour; we
do not count it (with it counted, Neighbor-1 would be the identity), so Neighbor-1 is the
nearest different code; ``count_self=True`` gives the other reading (k-th nearest
including b_c itself = (k-1)-th excluding it). Distances are Euclidean between the vectors
the decoder receives (``quantizer.lookup``); for the vMF SQ-VAE these are unit vectors,
where ||a - b||^2 = 2 - 2 cos(a, b), so the order is the vMF (cosine) order. Ties go to
the lower index.

**Interpolation** "appl[ies] linear interpolation of pairs of encoded points then
project[s] the interpolated vectors to their nearest codes. Their mixing ratios are
randomly distributed within [0, 1]": the encoder outputs z_a, z_b of a pair of images are
mixed as (1 - lambda) z_a + lambda z_b with one lambda ~ U[0, 1] per pair, and the mix is
quantized with the quantizer's deterministic ``encode`` (its posterior mode: the nearest
code in Euclidean distance for VQ-VAE and Gaussian SQ-VAE (I), (II) and fixed sigma, in
cosine for vMF, in the Mahalanobis metric of the encoder's precision for (III) and (IV)).
Each image i of a set is paired with the next one of a seeded random permutation, so a set
of N images gives N interpolations and no image is paired with itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from speechsq.errors import SpeechsqError


class ManipulationError(SpeechsqError, ValueError):
    """A quantizer or request the latent manipulations cannot work with."""


def code_vectors(quantizer) -> Tensor:
    """(K, D) vectors that the decoder receives for codes 0..K-1 (float64, detached)."""
    if quantizer.num_groups != 1:
        raise ManipulationError(
            f"{type(quantizer).__name__} has {quantizer.num_groups} codebooks per position; Neighbor-k needs one codebook"
        )
    device = next((p.device for p in quantizer.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            vectors = quantizer.lookup(torch.arange(quantizer.num_codes, device=device))
    except NotImplementedError as err:
        raise ManipulationError(f"{type(quantizer).__name__} has no single codebook to find neighbours in ({err})") from None
    return vectors.detach().double()


def neighbor_table(codes: Tensor, k: int, count_self: bool = False) -> Tensor:
    """(K,) long: entry c is the k-th nearest codebook element to ``codes[c]`` (see the
    module docstring); ``codes`` is (K, D)."""
    num = codes.shape[0]
    limit = num if count_self else num - 1
    if not 1 <= int(k) <= limit:
        raise ManipulationError(f"k must lie in [1, {limit}] for a codebook of {num} codes, got {k}")
    codes = codes.double()
    dist = torch.cdist(codes, codes).pow(2)
    eye = torch.eye(num, dtype=torch.bool, device=codes.device)
    # by index, not by distance: a duplicate of b_c is a neighbour, b_c itself is not (or is first)
    dist = dist.masked_fill(eye, -1.0 if count_self else float("inf"))
    order = torch.sort(dist, dim=1, stable=True).indices
    return order[:, int(k) - 1]


def neighbor_k(indices: Tensor, table: Tensor) -> Tensor:
    """Replace every index of a code map by its entry of :func:`neighbor_table`."""
    if indices.dtype.is_floating_point:
        raise ManipulationError(f"code indices must be integers, got {indices.dtype}")
    idx = indices.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= table.shape[0]):
        raise ManipulationError(f"code indices must lie in [0, {table.shape[0]}), found [{int(idx.min())}, {int(idx.max())}]")
    return table.to(idx.device)[idx]


def interpolation_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) image indices: i paired with its successor in a seeded permutation."""
    if n < 2:
        raise ManipulationError(f"interpolation needs at least 2 images, got {n}")
    order = np.random.default_rng([seed, 7]).permutation(n)
    return order, np.roll(order, -1)


def mixing_ratios(n: int, seed: int = 0) -> np.ndarray:
    """n ratios lambda ~ U[0, 1], one per pair (seeded)."""
    return np.random.default_rng([seed, 11]).uniform(0.0, 1.0, size=n)


def mix(z_a: Tensor, z_b: Tensor, ratios: Tensor) -> Tensor:
    """(1 - lambda) z_a + lambda z_b with one lambda per example of the batch."""
    if z_a.shape != z_b.shape:
        raise ManipulationError(f"cannot interpolate latents of shapes {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    lam = ratios.to(z_a.dtype).reshape(-1, *([1] * (z_a.ndim - 1)))
    if lam.shape[0] != z_a.shape[0]:
        raise ManipulationError(f"{lam.shape[0]} mixing ratios for {z_a.shape[0]} pairs")
    return (1.0 - lam) * z_a + lam * z_b


@torch.no_grad()
def interpolated_codes(model, images_a: Tensor, images_b: Tensor, ratios: Tensor) -> Tensor:
    """Code maps of the mixed encoder outputs of two image batches, projected to the codebook."""
    z_a = model.encode(images_a)["z_e"]
    z_b = model.encode(images_b)["z_e"]
    return model.quantizer.encode(mix(z_a, z_b, ratios))
