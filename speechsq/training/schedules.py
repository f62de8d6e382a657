"""Per-step schedules the trainer hands to the model through ``StepContext``.

* Gumbel-softmax temperature (SQ-VAE, EdVAE): ``tau = max(floor, init * exp(-decay * step))``,
  defaults init 1, decay 1e-5, floor 0 (the papers' ``exp(-1e-5 t)``).
* KL-weight warm-up, a factor in [0, 1] that the quantizers with a KL-type term multiply it by
  (their own beta is the upper bound): ``none`` (always 1, the default), ``linear``, and
  ``cosine`` (EdVAE/dVAE App. D: from 0 over the first ``steps`` iterations,
  ``(1 - cos(pi t / steps)) / 2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from speechsq.registry import Registry

KL_WARMUPS: Registry[Callable[[float], float]] = Registry("KL warm-up schedule")


@KL_WARMUPS.register("none")
def _no_warmup(progress: float) -> float:
    return 1.0


@KL_WARMUPS.register("linear")
def _linear_warmup(progress: float) -> float:
    return progress


@KL_WARMUPS.register("cosine")
def _cosine_warmup(progress: float) -> float:
    return 0.5 * (1.0 - math.cos(math.pi * progress))


@dataclass(frozen=True)
class TemperatureSchedule:
    init: float = 1.0
    decay: float = 1e-5
    floor: float = 0.0

    def __post_init__(self):
        if self.init <= 0 or self.decay < 0 or self.floor < 0:
            raise ValueError(f"temperature needs init > 0, decay >= 0, floor >= 0; got {self}")

    def __call__(self, step: int) -> float:
        return max(self.floor, self.init * math.exp(-self.decay * step))


@dataclass(frozen=True)
class KLWarmup:
    schedule: str = "none"
    steps: int = 5000

    def __post_init__(self):
        KL_WARMUPS.get(self.schedule)  # unknown names fail here, with the known ones listed
        if self.schedule != "none" and self.steps < 1:
            raise ValueError(f"KL warm-up {self.schedule!r} needs steps >= 1, got {self.steps}")

    def __call__(self, step: int) -> float:
        if self.schedule == "none":
            return 1.0
        return KL_WARMUPS.get(self.schedule)(min(1.0, step / self.steps))
