"""Gated PixelCNN prior over discrete code maps (van den Oord et al. 2016, "Conditional
Image Generation with PixelCNN Decoders"), as SQ-VAE Sec. 5.1 / App. E.1.3 use for
generation: trained on the code maps (B, H, W) of a trained image model, sampled position
by position in raster order, and decoded with that model's decoder.

Architecture (``channels`` = p, ``kernel_size`` = k, r = k // 2, ``layers`` = L)::

    codes (B, H, W) -> Embedding(K, p) -> x (B, p, H, W)
    layer 1..L:   v_pre = VConv(v)                      kernel (r+1) x k: rows i-r..i, cols j-r..j+r
                  v     = tanh(v_pre[:p]) * sigmoid(v_pre[p:])      (+ class bias)
                  h_pre = HConv(h) + Conv1x1(down(v_pre))           down: row i sees row i-1
                  h     = [h +] Conv1x1(tanh(h_pre[:p]) * sigmoid(h_pre[p:]))
    head:         ReLU, Conv1x1(p -> head), ReLU, Conv1x1(head -> K) -> logits (B, K, H, W)

The masked convolutions are written as convolutions of padded, shifted inputs (the same
weights a masked kernel would keep, without multiplying by zeros):

* the vertical stack at (i, j) sees rows <= i of its input. It never reaches the output
  directly, only through ``down`` (a one-row shift), so the horizontal stack receives
  rows < i only: the vertical stack covers the full width k above, so there is no blind
  spot to the upper right (the flaw of the vanilla PixelCNN the gated paper fixes);
* the horizontal stack of layer 1 ("mask A") sees columns j-r..j-1 of row i (not the
  current code); later layers ("mask B") see j-r..j of the previous layer, with a
  residual connection (layer 1 has none: its input contains the current code).

So the logits at (i, j) depend on exactly the codes at (i, j - L*r .. j - 1) and at rows
i - 1 - L*r .. i - 1, columns j - L*r .. j + L*r (clipped to the map); tests check this
set by gradients. Optional class conditioning (``num_classes``, off by default) adds a
learned per-class bias to every gate, as the gated paper's h-conditioning with a one-hot h.

Loss: the negative log-likelihood of the code map in nats, summed over its positions and
averaged over the batch (the "per example" convention of the rest of speechsq); metrics
``nats_per_code`` and ``bits_per_code``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechsq.errors import SpeechsqError
from speechsq.models.base import ModelOutput
from speechsq.models.registry import MODELS
from speechsq.quantizers import StepContext


class CodeMapError(SpeechsqError, ValueError):
    """Code maps (or labels) a prior cannot work with: wrong shape, dtype or range."""


def _full_precision(logits: Tensor) -> Tensor:
    """float32 for half-precision logits (autocast), unchanged otherwise: a softmax over K
    codes in fp16/bf16 loses the small probabilities the NLL is made of."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _gate(pre: Tensor) -> Tensor:
    """Gated activation tanh(a) * sigmoid(b) over the two halves of the channels."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x: Tensor) -> Tensor:
    """Row i receives row i - 1 (row 0 receives zeros)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def shift_right(x: Tensor) -> Tensor:
    """Column j receives column j - 1 (column 0 receives zeros)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class GatedLayer(nn.Module):
    """One layer of the two stacks (see the module docstring)."""

    def __init__(self, channels: int, kernel_size: int, first: bool, num_classes: int | None):
        super().__init__()
        r = kernel_size // 2
        self.r, self.first = r, first
        self.v_conv = nn.Conv2d(channels, 2 * channels, (r + 1, kernel_size))
        # mask A (first layer): the r codes left of j; mask B: the r codes left of j and j itself
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, r if first else r + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.class_bias = None if not num_classes else nn.Embedding(int(num_classes), 4 * channels)

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        r = self.r
        v_pre = self.v_conv(F.pad(v, (r, r, r, 0)))  # rows i-r..i, columns j-r..j+r
        if self.first:
            h_pre = self.h_conv(shift_right(F.pad(h, (r - 1, 0, 0, 0))))  # columns j-r..j-1 (never j)
        else:
            h_pre = self.h_conv(F.pad(h, (r, 0, 0, 0)))  # columns j-r..j
        h_pre = h_pre + self.v_to_h(shift_down(v_pre))
        if self.class_bias is not None:
            bias_v, bias_h = self.class_bias(labels)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + bias_v, h_pre + bias_h
        v_new = _gate(v_pre)
        h_new = self.h_out(_gate(h_pre))
        return v_new, (h_new if self.first else h + h_new)


class GatedPixelCNN(nn.Module):
    """Autoregressive prior p(codes) = prod_{raster order} p(c_ij | c_<ij [, label]).

    num_codes: K of the image model's codebook; height, width: the code-map size (for
    sampling; training accepts any size); num_classes: None (unconditional) or the number
    of class labels to condition on.
    """

    def __init__(
        self,
        num_codes: int,
        channels: int = 64,
        layers: int = 6,
        kernel_size: int = 5,
        head_channels: int = 256,
        num_classes: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        super().__init__()
        if int(num_codes) < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        if int(kernel_size) < 3 or int(kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3 (the horizontal mask A needs r >= 1), got {kernel_size}")
        if int(layers) < 1 or int(channels) < 1 or int(head_channels) < 1:
            raise ValueError(f"layers, channels and head_channels must be >= 1, got {layers}, {channels}, {head_channels}")
        self.num_codes = int(num_codes)
        self.kernel_size = int(kernel_size)
        self.num_layers = int(layers)
        self.num_classes = int(num_classes) if num_classes else None
        self.height = None if height is None else int(height)
        self.width = None if width is None else int(width)
        self.embedding = nn.Embedding(self.num_codes, int(channels))
        self.layers = nn.ModuleList(
            GatedLayer(int(channels), self.kernel_size, first=(i == 0), num_classes=self.num_classes)
            for i in range(self.num_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(int(channels), int(head_channels), 1), nn.ReLU(), nn.Conv2d(int(head_channels), self.num_codes, 1)
        )

    @property
    def receptive_radius(self) -> int:
        """L * r: how far left/right (and up, plus one row) the logits at a position see."""
        return self.num_layers * (self.kernel_size // 2)

    # ----- checking inputs ----------------------------------------------------------------
    def check_codes(self, codes: Tensor) -> Tensor:
        if not torch.is_tensor(codes) or codes.dtype.is_floating_point or codes.ndim != 3:
            got = f"{codes.dtype} {tuple(codes.shape)}" if torch.is_tensor(codes) else type(codes).__name__
            raise CodeMapError(f"code maps must be (B, H, W) integer code indices, got {got}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise CodeMapError(
                f"code indices must lie in [0, {self.num_codes}) (the prior's codebook size), found "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        return codes.long()

    def check_labels(self, labels: Tensor | None, batch: int) -> Tensor | None:
        if self.num_classes is None:
            return None
        if labels is None:
            raise CodeMapError(f"this prior is class-conditional ({self.num_classes} classes): give labels")
        labels = torch.as_tensor(labels).long().reshape(-1)
        if labels.shape[0] != batch:
            raise CodeMapError(f"{labels.shape[0]} labels for {batch} code maps")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise CodeMapError(f"labels must lie in [0, {self.num_classes}), found [{int(labels.min())}, {int(labels.max())}]")
        return labels

    # ----- the network --------------------------------------------------------------------
    def logits_from_embedding(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, channels, H, W) embedded codes -> (B, K, H, W) logits (exposed for the
        gradient tests of the causal mask)."""
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

    def logits(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        codes = self.check_codes(codes)
        labels = self.check_labels(labels, codes.shape[0])
        return self.logits_from_embedding(self.embedding(codes).permute(0, 3, 1, 2), labels)

    def log_prob(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B,) log p(code map) in nats."""
        codes = self.check_codes(codes)
        logp = torch.log_softmax(_full_precision(self.logits(codes, labels)), dim=1)
        return logp.gather(1, codes[:, None]).squeeze(1).flatten(1).sum(1)

    def forward(self, batch: dict[str, Tensor], ctx: StepContext | None = None) -> ModelOutput:
        codes = self.check_codes(batch["codes"])
        logits = self.logits(codes, batch.get("labels"))
        per_map = F.cross_entropy(_full_precision(logits), codes, reduction="none").flatten(1).sum(1)
        loss = per_map.mean()
        positions = codes.shape[1] * codes.shape[2]
        nats = loss.detach() / positions
        return ModelOutput(
            loss=loss,
            terms={"nll": loss},
            metrics={"nats_per_code": nats, "bits_per_code": nats / math.log(2.0)},
            outputs={"logits": logits.detach()},
        )

    # ----- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        num: int,
        height: int | None = None,
        width: int | None = None,
        labels: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> Tensor:
        """Draw ``num`` code maps (num, H, W) in raster order (H, W default to the training
        maps' size)."""
        height = height or self.height
        width = width or self.width
        if not height or not width:
            raise CodeMapError("the code-map size is unknown: pass height and width (the prior was built without them)")
        device = torch.device(device) if device is not None else self.embedding.weight.device
        labels = self.check_labels(None if labels is None else torch.as_tensor(labels, device=device), int(num))
        was = self.training
        self.eval()
        try:
            return sample_autoregressive(
                lambda codes: self.logits(codes, labels), int(num), int(height), int(width), self.num_codes,
                temperature=temperature, generator=generator, device=device,
            )  # fmt: skip
        finally:
            self.train(was)


def sample_autoregressive(
    logits_fn: Callable[[Tensor], Tensor],
    num: int,
    height: int,
    width: int,
    num_codes: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Sample (num, H, W) codes one position at a time in raster order: position (i, j) is
    drawn from ``softmax(logits_fn(codes)[:, :, i, j] / temperature)`` after every earlier
    position has been filled in (later positions hold 0 until their turn)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    codes = torch.zeros(num, height, width, dtype=torch.long, device=device)
    for i in range(height):
        for j in range(width):
            logits = _full_precision(logits_fn(codes)[:, :, i, j]) / float(temperature)
            if logits.shape != (num, num_codes):
                raise ValueError(f"logits_fn returned {tuple(logits.shape)} at ({i}, {j}), expected ({num}, {num_codes})")
            probs = torch.softmax(logits, dim=-1)
            codes[:, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return codes


def _options(node: Any) -> dict:
    from omegaconf import OmegaConf

    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node or {})


@MODELS.register("pixelcnn_prior")
def build_pixelcnn_prior(cfg: Any) -> GatedPixelCNN:
    """``cfg.model``: num_codes, height, width (filled from the code maps by the ``code_maps``
    batch source), channels, layers, kernel_size, head_channels, num_classes."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    m = _options(cfg.model)
    if m.get("num_codes") is None:
        raise ValueError("model.num_codes is not set: it comes from the code maps (data=code_maps data.codes_dir=...)")
    return GatedPixelCNN(
        num_codes=int(m["num_codes"]),
        channels=int(m.get("channels", 64)),
        layers=int(m.get("layers", 6)),
        kernel_size=int(m.get("kernel_size", 5)),
        head_channels=int(m.get("head_channels", 256)),
        num_classes=m.get("num_classes"),
        height=m.get("height"),
        width=m.get("width"),
    )
