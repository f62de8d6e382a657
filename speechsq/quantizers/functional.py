"""Numerical building blocks shared by the quantizers.

Everything here is O(N * K) in memory: distances are formed with matrix products
(``|z|^2 - 2 z.b + |b|^2``), never by broadcasting an (N, D, K) difference tensor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def squared_distances(rows: Tensor, codebook: Tensor) -> Tensor:
    """||rows_n - codebook_k||^2 as an (N, K) matrix."""
    rows_sq = rows.pow(2).sum(-1, keepdim=True)
    codes_sq = codebook.pow(2).sum(-1)
    return torch.addmm(rows_sq + codes_sq, rows, codebook.t(), alpha=-2.0).clamp_min_(0.0)


def weighted_squared_distances(rows: Tensor, codebook: Tensor, precision: Tensor) -> Tensor:
    """sum_j precision_nj (rows_nj - codebook_kj)^2 as (N, K), for a diagonal precision per row.

    Expands the square so that only (N, D) x (D, K) products are formed.
    """
    pz = precision * rows
    return ((pz * rows).sum(-1, keepdim=True) - 2.0 * pz @ codebook.t() + precision @ codebook.pow(2).t()).clamp_min_(0.0)


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy in nats along ``dim`` (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim)


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """exp(entropy) of the normalised histogram ``counts``."""
    total = counts.sum()
    if total <= 0:
        return counts.new_ones(())
    return torch.exp(entropy(counts / total))


def sample_gumbel(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    u = torch.rand(like.shape, device=like.device, dtype=like.dtype, generator=generator)
    return -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))


def gumbel_softmax(logits: Tensor, temperature: float, hard: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Relaxed one-hot sample (Jang et al. 2017; Maddison et al. 2017).

    With ``hard=True`` the forward value is the one-hot of the sample and the gradient is
    that of the relaxed sample (straight-through Gumbel-softmax).
    """
    if temperature <= 0:
        raise ValueError(f"Gumbel-softmax temperature must be > 0, got {temperature}")
    y = torch.softmax((logits + sample_gumbel(logits, generator)) / temperature, dim=-1)
    if not hard:
        return y
    one_hot = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)
    return one_hot - y.detach() + y


def one_hot(indices: Tensor, num_codes: int, dtype=torch.float32) -> Tensor:
    return torch.nn.functional.one_hot(indices, num_codes).to(dtype)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """In-place sum over data-parallel processes (no-op in a single process).

    Used for codebook statistics (EMA counts and sums, usage for code reset) so that every
    process applies the same codebook update and the replicas never drift apart.
    """
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """In-place broadcast from ``src`` (no-op in a single process); for random re-draws."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor
