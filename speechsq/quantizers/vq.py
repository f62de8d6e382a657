"""`vq`: VQ-VAE with straight-through gradients (van den Oord et al. 2017; SQ-VAE eq. 4).

loss = ||sg[z] - z_q||^2 (codebook) + beta ||z - sg[z_q]||^2 (commitment), beta = 0.25
(SQ-VAE App. E: "beta ... 0.25 ... as suggested in van den Oord et al.").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechsq.quantizers import functional as QF
from speechsq.quantizers.base import FlatQuantized, Quantizer, StepContext
from speechsq.quantizers.init import check_init_scheme, init_codebook_, kmeans_on_first_batch_
from speechsq.quantizers.registry import register_quantizer


@register_quantizer("vq")
class VectorQuantizer(Quantizer):
    """Nearest-neighbour quantizer with a gradient-trained codebook.

    Options: ``beta`` (commitment weight), ``init`` (``uniform`` | ``normal`` | ``kmeans``).
    """

    def __init__(self, num_codes: int, code_dim: int, beta: float = 0.25, init: str = "uniform"):
        super().__init__(num_codes, code_dim)
        self.beta = float(beta)
        self.init_scheme = check_init_scheme(init)
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim))
        init_codebook_(self.codebook, init)
        self.register_buffer("kmeans_done", torch.tensor(init != "kmeans"))

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        if self.training and self.init_scheme == "kmeans":
            kmeans_on_first_batch_(self.codebook.data, self.kmeans_done, rows)
        indices = QF.squared_distances(rows, self.codebook).argmin(-1)
        codes = self.codebook[indices]
        terms = {
            "codebook": (rows.detach() - codes).pow(2).sum(),
            "commitment": self.beta * (rows - codes.detach()).pow(2).sum(),
        }
        # straight-through estimator in training; the exact code at eval, so that
        # decode(encode(z)) equals the eval forward bit for bit.
        z_q = rows + (codes - rows).detach() if self.training else codes
        return FlatQuantized(z_q=z_q, indices=indices, loss_terms=terms)
