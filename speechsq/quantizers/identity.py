"""`identity`: no quantization at all (the bypass used for ablations and benchmarks)."""

from __future__ import annotations

import torch
from torch import Tensor

from speechsq.quantizers.base import FlatQuantized, Quantizer, StepContext
from speechsq.quantizers.registry import register_quantizer


@register_quantizer("identity")
class IdentityQuantizer(Quantizer):
    """Passes the latent through unchanged; every index is 0 and the latent loss is 0."""

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        return FlatQuantized(z_q=rows, indices=torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device))

    def lookup(self, indices: Tensor) -> Tensor:
        raise NotImplementedError("the identity quantizer has no codebook to decode from")
