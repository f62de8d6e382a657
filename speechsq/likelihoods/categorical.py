"""Naive categorical decoder: softmax over the categories + cross-entropy (SQ-VAE eq. 9,
the 'NC SQ-VAE'; also the decoder of the VQ-VAE and VAE baselines of Section 5.2).

Data: ``target`` holds integer category ids, ``(B, C, *spatial)`` (C = 1 for a grey image
with 256 levels or a segmentation map). The decoder emits ``C * V`` logits per position,
grouped by channel: channel ``c``'s logits are ``decoder_out[:, c * V : (c + 1) * V]``.

    -log p(x | z) = sum_d -log softmax_{x_d}(logits_d)       (summed over valid d, / B)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from speechsq.likelihoods.base import LIKELIHOODS, Likelihood, LikelihoodOutput, masked_sum


def check_category_target(target: Tensor, num_categories: int, who: str) -> Tensor:
    """Integer ids in [0, V), shape (B, C, ...); clear errors instead of a CUDA assert."""
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"{who}: target must hold integer category ids, got dtype {target.dtype}")
    if target.ndim < 2:
        raise ValueError(f"{who}: target must be (B, C, ...) category ids, got shape {tuple(target.shape)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_categories):
        raise ValueError(f"{who}: category ids must lie in [0, {num_categories}), found [{int(target.min())}, {int(target.max())}]")
    return target.long()


def split_channels(decoder_out: Tensor, target: Tensor, per_channel: int, who: str) -> Tensor:
    """(B, C * K, *S) -> (B, C, K, *S), checked against the target (B, C, *S)."""
    b, c = target.shape[:2]
    expected = (b, c * per_channel, *target.shape[2:])
    if tuple(decoder_out.shape) != expected:
        raise ValueError(f"{who}: decoder output must be {expected} for target {tuple(target.shape)}, got {tuple(decoder_out.shape)}")
    return decoder_out.reshape(b, c, per_channel, *target.shape[2:])


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(Likelihood):
    """Softmax over ``num_categories`` per data dimension; the NLL is the cross-entropy."""

    def __init__(self, num_categories: int):
        super().__init__()
        if int(num_categories) < 2:
            raise ValueError(f"num_categories must be >= 2, got {num_categories}")
        self.num_categories = int(num_categories)

    def out_channels(self, data_channels: int) -> int:
        return data_channels * self.num_categories

    def logits(self, decoder_out: Tensor, target_shape: tuple[int, ...]) -> Tensor:
        b, c = target_shape[:2]
        return decoder_out.reshape(b, c, self.num_categories, *target_shape[2:])

    def nll(self, decoder_out: Tensor, target: Tensor, mask: Tensor | None = None) -> LikelihoodOutput:
        who = type(self).__name__
        target = check_category_target(target, self.num_categories, who)
        logits = split_channels(decoder_out, target, self.num_categories, who).float()
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, C, *S)
        total, count = masked_sum(ce, mask)
        if mask is not None and count.item() == 0:
            raise ValueError(f"{who}: the mask leaves no valid data dimension")
        wrong, _ = masked_sum((logits.argmax(2) != target).float(), mask)
        loss = total / target.shape[0]
        return LikelihoodOutput(loss=loss, terms={"recon": loss}, metrics={"pixel_error": (wrong / count).detach()})

    def probs(self, decoder_out: Tensor, data_channels: int = 1) -> Tensor:
        """(B, C, V, *S) category probabilities."""
        b = decoder_out.shape[0]
        return decoder_out.reshape(b, data_channels, self.num_categories, *decoder_out.shape[2:]).float().softmax(2)

    def mean(self, decoder_out: Tensor) -> Tensor:
        """The mode: (B, C, *S) category ids."""
        b = decoder_out.shape[0]
        c = decoder_out.shape[1] // self.num_categories
        return decoder_out.reshape(b, c, self.num_categories, *decoder_out.shape[2:]).argmax(2)

    def encoder_input(self, target: Tensor) -> Tensor:
        """One-hot input for the encoder, (B, C * V, *S) (SQ-VAE E.3.2: x in R^{H x W x 256})."""
        target = check_category_target(target, self.num_categories, type(self).__name__)
        one_hot = F.one_hot(target, self.num_categories).movedim(-1, 2)  # (B, C, V, *S)
        return one_hot.reshape(target.shape[0], -1, *target.shape[2:]).float()
