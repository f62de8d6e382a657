"""What every trainable model returns to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """loss: scalar to back-propagate; terms: its named parts; metrics: detached scalars to
    log; outputs: optional tensors (e.g. the reconstruction) for evaluation and plots."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    outputs: dict[str, Tensor] = field(default_factory=dict)
