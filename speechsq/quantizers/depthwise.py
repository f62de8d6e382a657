"""`depthwise` (DVQ) and `spatial` (SVQ): G independent codebooks around any inner quantizer.

Both follow Fostiropoulos, "Depthwise Discrete Representation Learning"
(``depthwise_vq.txt``).

``depthwise`` (Sec. 3, eq. 3-4): the feature axis of every latent vector is split into G
disjoint slices of D / G channels; slice g is quantized by its own inner quantizer (its own
codebook of K codes of width D / G) and the quantized slices are concatenated back
(Sec. 3: "the result of concatenation"). The loss is the sum of the G inner losses
(eq. 4 sums the VQ and commitment terms over the codebooks). Indices gain a trailing group
axis: (B, T, G) or (B, H, W, G). ``input_dim == G * inner.input_dim``: the encoder emits G
consecutive blocks, each laid out as the inner quantizer expects (e.g. ``[z_hat, r_hat]``
per group for ``gmvq``, K logits per group for ``dvae``). With G = 1 the wrapper computes
exactly what its inner quantizer computes (same parameters drawn in the same order, same
random draws), apart from the extra index axis.

``spatial`` (Sec. 4.2, the SVQ baseline): "We train spatially independent codebooks. We do
this by splitting along the spatial dimension (e.g. width and height)". The positions, not
the features, are split into G segments; every segment has its own full-width inner
quantizer (K codes of width D), so ``input_dim == inner.input_dim`` and indices keep the
plain (B, T) / (B, H, W) shape, each index being relative to its segment's codebook.
Segments:

* sequences (B, T): the valid frames of each example are cut into G contiguous, equal
  parts in time order (frame j of n valid frames is in segment floor(j * G / n)), so the
  segmentation does not depend on how much padding a batch carries; ``decode`` recovers it
  from the ``-1`` entries of padded positions.
* images (B, C, H, W): G horizontal bands of rows, row h in band floor(h * G / H).

Metrics: each group's (segment's) inner metrics are averaged over groups under their usual
names (``perplexity``, ``soft_perplexity``, ``active_codes``, ``entropy`` and the inner
quantizer's own), and per-group values are added as ``perplexity/g{i}`` and
``active_codes/g{i}`` (``/s{i}`` for segments).

Data parallel: the inner quantizers sync their own statistics. With ``spatial`` an inner
quantizer that all-reduces (EMA) must see a non-empty segment on every process, which holds
whenever each process's batch has an example with at least G valid frames.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechsq.quantizers.base import (
    QuantizerOutput,
    PAD_INDEX,
    FlatQuantized,
    Quantizer,
    QuantizerInputError,
    StepContext,
    latent_to_rows,
    positions_shape,
)
from speechsq.quantizers.registry import build_quantizer, list_quantizers, quantizer_class, register_quantizer

WRAPPERS = ("depthwise", "spatial")


def _check_groups(wrapper: str, groups) -> int:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise QuantizerInputError(f"{wrapper}: groups must be a positive integer, got {groups!r}")
    return groups


def _build_inner_quantizers(wrapper: str, inner: str, groups: int, num_codes: int, code_dim: int, options: dict | None) -> nn.ModuleList:
    if inner in WRAPPERS:
        raise QuantizerInputError(f"{wrapper}: the inner quantizer cannot itself be a wrapper ({inner!r})")
    try:
        quantizer_class(inner)
    except QuantizerInputError:
        known = ", ".join(n for n in list_quantizers() if n not in WRAPPERS)
        raise QuantizerInputError(f"{wrapper}: unknown inner quantizer {inner!r}; known quantizers: {known}") from None
    if options is not None and not isinstance(options, dict):
        raise QuantizerInputError(f"{wrapper}: inner_options must be a dict of the inner quantizer's options, got {type(options).__name__}")
    return nn.ModuleList(build_quantizer(inner, num_codes=num_codes, code_dim=code_dim, **(options or {})) for _ in range(groups))


def _mean_metrics(per_group: list[tuple[int, dict[str, Tensor]]], suffix: str) -> dict[str, Tensor]:
    """Average each metric over the (group id, metrics) pairs; add per-group perplexity and usage."""
    keys = sorted(set().union(*(m for _, m in per_group)))
    merged = {k: torch.stack([m[k] for _, m in per_group if k in m]).mean() for k in keys}
    for g, m in per_group:
        for k in ("perplexity", "active_codes"):
            if k in m:
                merged[f"{k}/{suffix}{g}"] = m[k]
    return merged


def _sum_terms(per_group: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    terms: dict[str, Tensor] = {}
    for group_terms in per_group:
        for k, v in group_terms.items():
            terms[k] = terms[k] + v if k in terms else v
    return terms


@register_quantizer("depthwise")
class DepthwiseQuantizer(Quantizer):
    """DVQ: ``build_quantizer("depthwise", K, D, inner="vq_ema", groups=G, inner_options={...})``."""

    def __init__(self, num_codes: int, code_dim: int, inner: str = "vq", groups: int = 2, inner_options: dict | None = None):
        super().__init__(num_codes, code_dim)
        groups = _check_groups("depthwise", groups)
        if code_dim % groups != 0:
            raise QuantizerInputError(f"depthwise: groups={groups} must divide code_dim={code_dim} (each group gets code_dim / groups channels)")
        self.inner_name = inner
        self.quantizers = _build_inner_quantizers("depthwise", inner, groups, num_codes, code_dim // groups, inner_options)
        self.stochastic = self.quantizers[0].stochastic

    @property
    def num_groups(self) -> int:
        return len(self.quantizers)

    @property
    def input_dim(self) -> int:
        return self.num_groups * self.quantizers[0].input_dim

    def forward(self, z: Tensor, mask: Tensor | None = None, ctx: StepContext | None = None) -> QuantizerOutput:
        # Each group runs the inner quantizer's own forward on its channel slice, so inner
        # quantizers that need the example structure (sq_gauss2 pools its variance over an
        # example's positions) behave exactly as they do alone.
        self._check_latent(z)
        channel_axis = -1 if z.ndim == 3 else 1
        slices = z.split(self.quantizers[0].input_dim, dim=channel_axis)
        outs = [q(s, mask, ctx) for q, s in zip(self.quantizers, slices)]
        terms = _sum_terms([o.terms for o in outs])
        return QuantizerOutput(
            z_q=torch.cat([o.z_q for o in outs], dim=channel_axis),
            indices=torch.stack([o.indices for o in outs], dim=-1),
            loss=sum(o.loss for o in outs),
            terms=terms,
            metrics=_mean_metrics([(g, o.metrics) for g, o in enumerate(outs)], "g"),
        )

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        raise RuntimeError("depthwise quantizes channel slices through each inner forward(); call forward()")

    def lookup(self, indices: Tensor) -> Tensor:
        """(N, G) indices -> (N, code_dim): the concatenated codes of the G groups."""
        return torch.cat([q.lookup(indices[:, g]) for g, q in enumerate(self.quantizers)], dim=-1)

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """(B, T, G) -> (B, T, D); (B, H, W, G) -> (B, D, H, W). Padded positions (-1) decode to 0."""
        if indices.ndim not in (3, 4) or indices.shape[-1] != self.num_groups:
            raise QuantizerInputError(
                f"depthwise indices must be (B, T, G) or (B, H, W, G) with G={self.num_groups}, got shape {tuple(indices.shape)}"
            )
        flat = indices.reshape(-1, self.num_groups).long()
        if (flat >= self.num_codes).any() or (flat < PAD_INDEX).any():
            raise QuantizerInputError(f"indices must lie in [0, {self.num_codes}) (or -1 for padding)")
        padded = flat == PAD_INDEX
        keep = ~padded.any(-1)
        if (padded.any(-1) & ~padded.all(-1)).any():
            raise QuantizerInputError("a position is padded (-1) in some groups but not in others")
        rows = torch.zeros(flat.shape[0], self.code_dim, device=flat.device, dtype=torch.float32)
        rows[keep] = self.lookup(flat[keep]).float()
        if indices.ndim == 3:
            return rows.reshape(*indices.shape[:2], self.code_dim)
        b, h, w, _ = indices.shape
        return rows.reshape(b, h, w, self.code_dim).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, inner={self.inner_name}, groups={self.num_groups}"


def sequence_segments(valid: Tensor, groups: int) -> Tensor:
    """Segment id of every position of a (B, T) validity grid: valid frame j of n -> floor(j * G / n)."""
    valid = valid.long()
    rank = valid.cumsum(1) - 1
    count = valid.sum(1, keepdim=True).clamp_min(1)
    return ((rank.clamp_min(0) * groups) // count).clamp_max(groups - 1)


def image_segments(batch: int, height: int, width: int, groups: int, device) -> Tensor:
    """Segment id of every position of a (B, H, W) grid: row h -> band floor(h * G / H)."""
    bands = torch.arange(height, device=device) * groups // height
    return bands[None, :, None].expand(batch, height, width)


@register_quantizer("spatial")
class SpatialQuantizer(Quantizer):
    """SVQ baseline: G codebooks over G time (or image-row) segments (see the module docstring)."""

    def __init__(self, num_codes: int, code_dim: int, inner: str = "vq", groups: int = 2, inner_options: dict | None = None):
        super().__init__(num_codes, code_dim)
        self.inner_name = inner
        self.quantizers = _build_inner_quantizers("spatial", inner, _check_groups("spatial", groups), num_codes, code_dim, inner_options)
        self.stochastic = self.quantizers[0].stochastic
        self._row_segments: Tensor | None = None

    @property
    def num_segments(self) -> int:
        return len(self.quantizers)

    @property
    def input_dim(self) -> int:
        return self.quantizers[0].input_dim

    def segments_for(self, shape: tuple[int, ...], valid: Tensor, device) -> Tensor:
        """Segment id per position ((B, T) or (B, H, W)) for a latent of ``shape`` and validity grid."""
        if len(shape) == 3:
            return sequence_segments(valid, self.num_segments)
        b, _, h, w = shape
        return image_segments(b, h, w, self.num_segments, device)

    def forward(self, z: Tensor, mask: Tensor | None = None, ctx: StepContext | None = None):
        # quantize_flat only sees the valid rows; hand it their segment ids (in the same
        # row-major order the base uses) for the duration of this call.
        _, shape = latent_to_rows(self._check_latent(z))
        valid = self._check_mask(mask, shape, z.device)
        grid = positions_shape(shape)
        valid_grid = torch.ones(grid, dtype=torch.bool, device=z.device) if valid is None else valid.reshape(grid)
        segments = self.segments_for(shape, valid_grid, z.device).reshape(-1)
        self._row_segments = segments if valid is None else segments[valid]
        try:
            return super().forward(z, mask, ctx)
        finally:
            self._row_segments = None

    def quantize_flat(self, rows: Tensor, ctx: StepContext) -> FlatQuantized:
        if self._row_segments is None or self._row_segments.shape[0] != rows.shape[0]:
            raise RuntimeError("spatial quantizes positions by segment; call it through forward(), not quantize_flat()")
        n = rows.shape[0]
        z_q = rows.new_zeros(n, self.code_dim)
        indices = torch.full((n,), PAD_INDEX, dtype=torch.long, device=rows.device)
        flats, per_metrics = [], []
        for g, q in enumerate(self.quantizers):
            where = (self._row_segments == g).nonzero(as_tuple=True)[0]
            if where.numel() == 0:  # a batch of very short sequences can leave a segment empty
                continue
            flat = q.quantize_flat(rows[where], ctx)
            z_q = z_q.index_copy(0, where, flat.z_q.to(z_q.dtype))
            indices = indices.index_copy(0, where, flat.indices)
            flats.append(flat)
            per_metrics.append((g, q._metrics(flat)))
        return FlatQuantized(
            z_q=z_q,
            indices=indices,
            loss_terms=_sum_terms([f.loss_terms for f in flats]),
            metrics=_mean_metrics(per_metrics, "s"),
        )

    def _metrics(self, flat: FlatQuantized) -> dict[str, Tensor]:
        return {k: v.detach().float() for k, v in flat.metrics.items()}

    def lookup(self, indices: Tensor) -> Tensor:
        raise NotImplementedError("spatial codes depend on their position; decode full index grids with decode()")

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """(B, T) -> (B, T, D); (B, H, W) -> (B, D, H, W); each position read from its segment's codebook."""
        if indices.ndim not in (2, 3):
            raise QuantizerInputError(f"indices must be (B, T) or (B, H, W), got shape {tuple(indices.shape)}")
        idx = indices.long()
        if (idx >= self.num_codes).any() or (idx < PAD_INDEX).any():
            raise QuantizerInputError(f"indices must lie in [0, {self.num_codes}) (or -1 for padding)")
        valid = idx != PAD_INDEX
        if indices.ndim == 2:
            segments = sequence_segments(valid, self.num_segments)
        else:
            segments = image_segments(*idx.shape, self.num_segments, idx.device)
        flat_idx, flat_seg, flat_valid = idx.reshape(-1), segments.reshape(-1), valid.reshape(-1)
        rows = torch.zeros(flat_idx.shape[0], self.code_dim, device=idx.device, dtype=torch.float32)
        for g, q in enumerate(self.quantizers):
            where = (flat_valid & (flat_seg == g)).nonzero(as_tuple=True)[0]
            if where.numel():
                rows[where] = q.lookup(flat_idx[where]).float()
        if indices.ndim == 2:
            return rows.reshape(*indices.shape, self.code_dim)
        b, h, w = indices.shape
        return rows.reshape(b, h, w, self.code_dim).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, inner={self.inner_name}, segments={self.num_segments}"
