"""Decoder likelihoods p_theta(x | z_q): their own modules, so that speech (Gaussian) and
images (Gaussian, categorical, vMF) plug into the same place of the same trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

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
