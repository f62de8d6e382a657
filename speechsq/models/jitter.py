"""Time-jitter regularisation (Chorowski et al. 2019), as applied to the speech latents.

In training, every frame t is replaced by frame t-1 with probability p/2, by frame t+1 with
probability p/2, and kept with probability 1 - p. Replacements come from the *original*
sequence (no chains), and frames at the ends are clamped: the first frame can only be kept
or take its right neighbour, the last valid frame (per example, from ``lengths``) only its
left neighbour, so a frame is never pulled from outside the sequence or from padding.
In eval mode, or with p = 0, jitter is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Jitter(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"jitter probability must lie in [0, 1], got {p}")
        self.p = float(p)

    def source_indices(self, batch: int, frames: int, lengths: Tensor | None, device) -> Tensor:
        """(B, T) index of the frame each output frame is copied from."""
        u = torch.rand(batch, frames, device=device)
        shift = (u < self.p / 2).long() * -1 + (u > 1.0 - self.p / 2).long()
        index = torch.arange(frames, device=device).expand(batch, frames) + shift
        last = (lengths.to(device) - 1).clamp_min(0)[:, None] if lengths is not None else frames - 1
        return torch.minimum(index.clamp_min(0), torch.as_tensor(last, device=device))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, T, C); lengths: optional (B,) valid frames per example."""
        if not self.training or self.p == 0.0:
            return x
        b, t, c = x.shape
        index = self.source_indices(b, t, lengths, x.device)
        return torch.gather(x, 1, index.unsqueeze(-1).expand(b, t, c))

    def extra_repr(self) -> str:
        return f"p={self.p}"
