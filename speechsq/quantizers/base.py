"""The shared quantizer contract: one base class, one typed result, one step context.

Every quantizer in speechsq is a subclass of :class:`Quantizer`. The base class owns all
the bookkeeping that is the same for every method, so that each quantizer module only
writes its own mathematics in :meth:`Quantizer.quantize_flat`:

* layout: speech latents are ``(B, T, C)`` (channels last), image latents are
  ``(B, C, H, W)`` (channels first). The base flattens both to ``(N, C)`` rows and back.
* masking: a boolean mask (``(B, T)`` or ``(B, H, W)``, True = real frame) removes padded
  rows *before* the subclass sees them, so padding can neither move a codebook nor count
  in a loss or a metric. Padded positions come back with a zero code and index ``-1``.
* precision: quantization always runs in float32, also under CUDA autocast, because
  fp16/bf16 distances flip argmins and break the indices -> codes round trip.
* validation: wrong widths, NaN/Inf latents and badly shaped masks are clear errors.
* metrics: hard-code perplexity, soft (average-posterior) perplexity, active codes and
  mean posterior entropy are computed here from what the subclass returns.

Loss convention: ``QuantizerOutput.loss`` is the latent part of the negative ELBO (or the
VQ surrogate) summed over valid positions and averaged over the ``B`` examples of the
batch ("per example"). Subclasses return row *sums* in ``FlatQuantized.loss_terms``;
the base divides by ``B``. Each term is already weighted, so ``loss == sum(terms)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from speechsq.errors import SpeechsqError
from speechsq.quantizers import functional as QF

PAD_INDEX = -1


@dataclass
class StepContext:
    """What the trainer tells the quantizer at each step.

    ``temperature`` is the Gumbel-softmax tau, ``kl_weight`` the warm-up weight that the
    quantizers with a KL-type term multiply it by, ``sample`` asks stochastic quantizers
    to sample at eval time instead of taking the posterior argmax.
    """

    step: int = 0
    temperature: float = 1.0
    kl_weight: float = 1.0
    sample: bool = False


@dataclass
class FlatQuantized:
    """What a subclass returns for ``N`` valid rows.

    z_q: (N, code_dim) vectors for the decoder.
    indices: (N,) hard code indices (posterior argmax, or the sampled code in training).
    loss_terms: weighted loss terms, each the *sum* over the N rows.
    probs: optional (N, K) soft posterior, used for soft perplexity and entropy metrics.
    metrics: extra scalars (annealing parameters such as ``sigma2_phi`` or ``kappa_phi``).
    """

    z_q: Tensor
    indices: Tensor
    loss_terms: dict[str, Tensor] = field(default_factory=dict)
    probs: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class QuantizerOutput:
    """The result of every quantizer's forward.

    z_q: tensor for the decoder, same layout as the input but with ``code_dim`` channels.
    indices: hard codes, ``(B, T)`` or ``(B, H, W)`` (a trailing group axis for
        ``depthwise``); ``-1`` at masked positions.
    loss: total latent loss (per example), differentiable.
    terms: the named, weighted parts of ``loss`` (differentiable; detach to log).
    metrics: detached scalars for logging.
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    terms: dict[str, Tensor]
    metrics: dict[str, Tensor]


class QuantizerInputError(SpeechsqError, ValueError):
    """A latent, mask or option that a quantizer cannot work with."""


def latent_to_rows(z: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """(B, T, C) or (B, C, H, W) -> (N, C) rows, plus what is needed to undo it."""
    if z.ndim == 3:
        return z.reshape(-1, z.shape[-1]), tuple(z.shape)
    if z.ndim == 4:
        b, c, h, w = z.shape
        return z.permute(0, 2, 3, 1).reshape(-1, c), tuple(z.shape)
    raise QuantizerInputError(
        f"latent must be (B, T, C) for sequences or (B, C, H, W) for images, got shape {tuple(z.shape)}"
    )


def rows_to_latent(rows: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`latent_to_rows` for rows of any width."""
    if len(shape) == 3:
        b, t, _ = shape
        return rows.reshape(b, t, rows.shape[-1])
    b, _, h, w = shape
    return rows.reshape(b, h, w, rows.shape[-1]).permute(0, 3, 1, 2)


def positions_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the index/mask grid of a latent: (B, T) or (B, H, W)."""
    return (shape[0], shape[1]) if len(shape) == 3 else (shape[0], shape[2], shape[3])


class Quantizer(nn.Module):
    """Base class of every quantizer (see the module docstring for the contract)."""

    #: True for quantizers whose training forward is random (Gumbel, noise).
    stochastic: bool = False

    def __init__(self, num_codes: int, code_dim: int):
        super().__init__()
        if int(num_codes) < 2:
            raise QuantizerInputError(f"num_codes must be >= 2 (a codebook of one code carries no information), got {num_codes}")
        if int(code_dim) < 1:
            raise QuantizerInputError(f"code_dim must be >= 1, got {code_dim}")
        self.num_codes = int(num_codes)
        self.code_dim = int(code_dim)

    # ----- what models ask -------------------------------------------------------------
    @property
    def input_dim(self) -> int:
        """Channels the encoder must produce for this quantizer (code_dim + extras)."""
        return self.code_dim

    @property
    def num_groups(self) -> int:
        """Codebooks per position (``depthwise`` has G; everything else 1)."""
        return 1

    # ----- the one method subclasses write ----------------------------------------------
    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:  # pragma: no cover - abstract
        raise NotImplementedError

    def lookup(self, indices: Tensor) -> Tensor:
        """(N,) indices -> (N, code_dim) code vectors as the eval forward gives them."""
        return self.codebook[indices]

    # ----- forward ----------------------------------------------------------------------
    def forward(self, z: Tensor, mask: Tensor | None = None, ctx: StepContext | None = None) -> QuantizerOutput:
        ctx = ctx or StepContext()
        rows, shape = latent_to_rows(self._check_latent(z))
        valid = self._check_mask(mask, shape, z.device)
        num_examples = shape[0]
        with torch.autocast(device_type=z.device.type, enabled=False):
            rows = rows.float()
            picked = rows if valid is None else rows[valid]
            if picked.shape[0] == 0:
                raise QuantizerInputError("the mask leaves no valid position to quantize")
            flat = self.quantize_flat(picked, ctx)
            terms = {k: v / num_examples for k, v in flat.loss_terms.items()}
            loss = sum(terms.values()) if terms else picked.new_zeros(())
            metrics = self._metrics(flat)
            z_q_rows, idx_rows = self._scatter(flat, valid, rows.shape[0])
        z_q = rows_to_latent(z_q_rows, shape)
        indices = idx_rows.reshape(*positions_shape(shape), *idx_rows.shape[1:])
        return QuantizerOutput(z_q=z_q, indices=indices, loss=loss, terms=terms, metrics=metrics)

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Deterministic hard codes; equal to ``forward(z).indices`` in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(z, mask).indices
        finally:
            self.train(was_training)

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Codes for hard indices: (B, T) -> (B, T, D); (B, H, W) -> (B, D, H, W).

        Index ``-1`` (a masked position) decodes to a zero vector, as in ``forward``.
        """
        if indices.ndim not in (2, 3):
            raise QuantizerInputError(f"indices must be (B, T) or (B, H, W), got shape {tuple(indices.shape)}")
        flat = indices.reshape(-1).long()
        if (flat >= self.num_codes).any() or (flat < PAD_INDEX).any():
            raise QuantizerInputError(f"indices must lie in [0, {self.num_codes}) (or -1 for padding)")
        keep = flat != PAD_INDEX
        rows = torch.zeros(flat.shape[0], self.code_dim, device=flat.device, dtype=torch.float32)
        rows[keep] = self.lookup(flat[keep]).float()
        if indices.ndim == 2:
            return rows.reshape(*indices.shape, self.code_dim)
        b, h, w = indices.shape
        return rows.reshape(b, h, w, self.code_dim).permute(0, 3, 1, 2)

    # ----- helpers shared by all subclasses ---------------------------------------------
    def _check_latent(self, z: Tensor) -> Tensor:
        if not torch.is_tensor(z):
            raise QuantizerInputError(f"latent must be a torch.Tensor, got {type(z).__name__}")
        if z.ndim not in (3, 4):
            raise QuantizerInputError(
                f"latent must be (B, T, C) for sequences or (B, C, H, W) for images, got shape {tuple(z.shape)}"
            )
        channels = z.shape[-1] if z.ndim == 3 else z.shape[1]
        if channels != self.input_dim:
            where = "last" if z.ndim == 3 else "second"
            raise QuantizerInputError(
                f"{type(self).__name__} expects {self.input_dim} latent channels (axis {where}), got {channels}; "
                f"set the encoder's output width from quantizer.input_dim"
            )
        if not torch.isfinite(z).all():
            bad = int((~torch.isfinite(z)).sum())
            raise QuantizerInputError(f"latent contains {bad} NaN/Inf values; the encoder diverged or the input is corrupt")
        return z

    @staticmethod
    def _check_mask(mask: Tensor | None, shape: tuple[int, ...], device) -> Tensor | None:
        if mask is None:
            return None
        expected = positions_shape(shape)
        if tuple(mask.shape) != expected:
            raise QuantizerInputError(f"mask must have shape {expected} (one entry per latent position), got {tuple(mask.shape)}")
        return mask.to(device=device, dtype=torch.bool).reshape(-1)

    def _scatter(self, flat: FlatQuantized, valid: Tensor | None, n_rows: int) -> tuple[Tensor, Tensor]:
        if valid is None:
            return flat.z_q, flat.indices
        z_q = flat.z_q.new_zeros(n_rows, flat.z_q.shape[-1])
        z_q = z_q.index_put((valid.nonzero(as_tuple=True)[0],), flat.z_q)
        idx = flat.indices.new_full((n_rows, *flat.indices.shape[1:]), PAD_INDEX)
        idx[valid] = flat.indices
        return z_q, idx

    def _metrics(self, flat: FlatQuantized) -> dict[str, Tensor]:
        metrics = {k: v.detach().float() for k, v in flat.metrics.items()}
        idx = flat.indices.detach()
        if idx.ndim == 1:  # grouped quantizers report their own per-group metrics
            counts = torch.bincount(idx, minlength=self.num_codes).float()
            metrics["perplexity"] = QF.perplexity_from_counts(counts)
            metrics["active_codes"] = (counts > 0).sum().float()
        if flat.probs is not None:
            probs = flat.probs.detach().float()
            metrics["soft_perplexity"] = QF.perplexity_from_counts(probs.sum(0))
            if "entropy" not in metrics:  # a subclass that has it from its loss spares an (N, K) pass
                metrics["entropy"] = QF.entropy(probs).mean()
        return metrics

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, code_dim={self.code_dim}, input_dim={self.input_dim}"

