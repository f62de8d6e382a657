"""The validation pass of the shared trainer: the mean loss, terms and metrics of the model on
held-out batches, in eval mode, without touching any random stream of the training.

Held-out batches come from a validation source (``speechsq.data.validation``, contract in
docs/ARCHITECTURE.md section 5): ``batches()`` yields the same batches in the same order at
every call. Means are over examples (dim 0 of the batch tensors), each batch weighted by its
size, summed over data-parallel processes (each validates its own shard), so the result does
not depend on the batch size or the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Optional, Union

import torch
from torch import nn

from speechsq.training import distributed as D


@dataclass(frozen=True)
class ValidationConfig:
    """``training.validation``: ``every`` N updates, ``epoch`` (once per pass over the training
    source, which must know its ``batches_per_epoch``), or 0 (off); ``max_batches``: use only
    the first N held-out batches (null: all)."""

    every: Union[int, Literal["epoch"]] = 0
    max_batches: Optional[int] = None

    def __post_init__(self):
        if self.every != "epoch" and self.every < 0:
            raise ValueError(f"every must be >= 0 (0: off) or 'epoch', got {self.every}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or null, got {self.max_batches}")


@dataclass
class ValidationResult:
    """Means over ``examples`` held-out examples; ``values`` keys as the training log:
    ``loss``, ``terms/<name>``, ``metrics/<name>``."""

    step: int
    examples: int
    values: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.values["loss"]


def batch_size_of(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("a validation batch needs at least one tensor with a batch dimension")


@torch.no_grad()
def run_validation(model: nn.Module, batches: Iterable[dict[str, Any]], ctx, device: torch.device, step: int,
                   dist_ctx: D.DistContext | None = None, max_batches: int | None = None) -> ValidationResult:
    """Mean loss/terms/metrics of ``model`` (the unwrapped module) over ``batches``."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    examples = 0
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):  # the training's random streams stay untouched
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                n = batch_size_of(batch)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                out = model(batch, ctx)
                values = {"loss": out.loss}
                values.update({f"terms/{k}": v for k, v in out.terms.items()})
                values.update({f"metrics/{k}": v for k, v in out.metrics.items()})
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach().float().reshape(())) * n
                examples += n
    finally:
        model.train(was_training)
    keys = sorted(sums)
    if dist_ctx is not None and dist_ctx.enabled:
        packed = torch.tensor([float(examples)] + [sums[k] for k in keys], dtype=torch.float64, device=device)
        D.all_reduce_sum(packed)
        examples = int(round(packed[0].item()))
        sums = dict(zip(keys, packed[1:].tolist()))
    if examples == 0:
        raise ValueError("the validation set gave no batches")
    return ValidationResult(step=step, examples=examples, values={k: sums[k] / examples for k in keys})
