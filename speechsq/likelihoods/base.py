"""Decoder likelihoods p_theta(x | z_q): their own modules, so that speech (Gaussian) and
images (Gaussian, categorical, vMF) plug into the same place of the same trainer.

Contract for every likelihood (subclass :class:`Likelihood`, register the class with
``@LIKELIHOODS.register("name")``; models build it as ``LIKELIHOODS.get(name)(**options)``):

* ``out_channels(C)``: how many channels the decoder must emit for data with ``C`` channels
  (a categorical likelihood over ``V`` values per channel returns ``C * V``).
* ``nll(decoder_out, target, mask)``: the negative log-likelihood, **summed over the valid
  data dimensions of each example and averaged over the B examples** (``target.shape[0]``),
  the same "per example" convention as the quantizer loss. ``mask`` is a bool tensor
  broadcastable to ``target`` (e.g. ``(B, 1, T)`` for ``(B, C, T)`` speech); padded positions
  must neither count in the loss nor in the metrics. Constants that do not depend on any
  parameter (``D/2 log 2 pi`` for Gaussians) may be dropped; say so in the docstring.
* ``mean(decoder_out)``: the reconstruction in data space (mean or mode of p(x | z)).

Use :func:`masked_sum` for the reductions so that every likelihood treats masks alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from speechsq.registry import Registry

LIKELIHOODS: Registry[type["Likelihood"]] = Registry("likelihood")


@dataclass
class LikelihoodOutput:
    """loss: negative log-likelihood summed over valid data dimensions, averaged over the
    B examples ("per example", the same convention as the quantizer loss);
    terms: its named parts; metrics: detached scalars (e.g. ``sigma2``, ``mse``, ``kappa``)."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)


def masked_sum(values: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Sum of ``values`` over the positions where ``mask`` is True, and how many there are.

    ``mask`` is broadcast to ``values``; ``None`` means every position counts.
    """
    if mask is None:
        return values.sum(), values.new_tensor(float(values.numel()))
    full = torch.broadcast_to(mask.to(dtype=torch.bool, device=values.device), values.shape)
    return values.masked_fill(~full, 0.0).sum(), full.sum().to(values.dtype)


class Likelihood(nn.Module):
    """``decoder_out`` has ``out_channels(C)`` channels where the data has ``C``.

    ``mask`` (optional) is broadcastable to the target and marks the dimensions that count.
    """

    def out_channels(self, data_channels: int) -> int:
        return data_channels

    def nll(self, decoder_out: Tensor, target: Tensor, mask: Tensor | None = None) -> LikelihoodOutput:  # pragma: no cover
        raise NotImplementedError

    def mean(self, decoder_out: Tensor) -> Tensor:
        """The reconstruction in data space (mean or mode of p(x | z))."""
        return decoder_out
