"""Per-step schedules: what the trainer hands the model through ``StepContext``, and the
learning-rate schedulers.

* Gumbel-softmax temperature, part of each quantizer's configuration
  (``quantizer.temperature``, copied to ``training.temperature`` by interpolation):
  ``tau = max(floor, init * exp(-decay * step))``. ``decay: auto`` anneals from ``init`` to
  ``floor`` over the run (GM-VQ Sec. 5.1: "starts at 2.0 and is gradually reduced to 0.1
  during training"): ``decay = ln(init / floor) / training.steps``.
* KL-weight warm-up, a factor in [0, 1] that the quantizers with a KL-type term multiply it by
  (their own beta is the upper bound): ``none`` (always 1, the default), ``linear``, and
  ``cosine`` (EdVAE/dVAE App. D: from 0 over the first ``steps`` iterations,
  ``(1 - cos(pi t / steps)) / 2``).
* Learning-rate schedulers (``training.scheduler``, registry :data:`LR_SCHEDULERS`):
  ``multistep`` (the LR times ``gamma`` at each of ``milestones``, counted in updates: the
  update with index ``m`` (0-based) is the first at the lower rate; SQ-VAE App. E.2.2) and
  ``plateau`` (the LR times ``plateau.factor`` once the validation loss has not improved for
  ``plateau.patience`` validations in a row; SQ-VAE App. E.1.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Literal, Protocol, Union

import torch

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
    """``tau(step) = max(floor, init * exp(-decay * step))``; ``decay="auto"`` until
    :meth:`for_run` turns it into the rate that reaches ``floor`` at the last step."""

    init: float = 1.0
    decay: Union[float, Literal["auto"]] = 1e-5
    floor: float = 0.0

    def __post_init__(self):
        if self.init <= 0 or self.floor < 0:
            raise ValueError(f"needs init > 0 and floor >= 0; got init={self.init}, floor={self.floor}")
        if self.decay == "auto":
            if not 0 < self.floor < self.init:
                raise ValueError(
                    f"decay=auto anneals from init to floor over the run, so it needs 0 < floor < init; "
                    f"got init={self.init}, floor={self.floor}"
                )
        elif self.decay < 0:
            raise ValueError(f"decay must be >= 0 or 'auto', got {self.decay}")

    def for_run(self, steps: int) -> "TemperatureSchedule":
        """The schedule of a run of ``steps`` updates (``auto`` resolved)."""
        if self.decay != "auto":
            return self
        return replace(self, decay=math.log(self.init / self.floor) / int(steps))

    def __call__(self, step: int) -> float:
        if self.decay == "auto":
            raise ValueError("temperature decay=auto is resolved by for_run(steps) before use")
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


# ----- learning-rate schedulers ---------------------------------------------------------------
@dataclass(frozen=True)
class PlateauConfig:
    """``training.plateau``: halve (``factor``) the LR once the validation loss has not
    improved for ``patience`` validations in a row. An improvement is a loss below
    ``best - threshold * |best|`` (relative, and correct for negative losses, which a
    Gaussian NLL often is)."""

    patience: int = 3
    factor: float = 0.5
    threshold: float = 1e-4
    min_lr: float = 0.0

    def __post_init__(self):
        if self.patience < 1 or not 0 < self.factor < 1 or self.threshold < 0 or self.min_lr < 0:
            raise ValueError(
                f"needs patience >= 1, 0 < factor < 1, threshold >= 0, min_lr >= 0; got patience={self.patience}, "
                f"factor={self.factor}, threshold={self.threshold}, min_lr={self.min_lr}"
            )


class LRSchedule(Protocol):
    """What the trainer calls: after every update, and after every validation pass."""

    name: str

    def after_update(self) -> None: ...

    def after_validation(self, loss: float) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


LR_SCHEDULERS: Registry[Callable[..., LRSchedule]] = Registry("learning-rate scheduler")


@LR_SCHEDULERS.register("multistep")
class MultiStepSchedule:
    """The LR times ``gamma`` at each milestone (counted in updates)."""

    name = "multistep"
    needs_validation = False

    def __init__(self, optimizer: torch.optim.Optimizer, milestones=(), gamma: float = 0.5, **_):
        self._torch = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)

    def after_update(self) -> None:
        self._torch.step()

    def after_validation(self, loss: float) -> None:
        pass

    def state_dict(self) -> dict:
        state = self._torch.state_dict()
        state["milestones"] = dict(state["milestones"])  # a Counter: keep checkpoints plain data
        return state

    def load_state_dict(self, state: dict) -> None:
        from collections import Counter

        self._torch.load_state_dict({**state, "milestones": Counter(state["milestones"])})


@LR_SCHEDULERS.register("plateau")
class PlateauSchedule:
    """See :class:`PlateauConfig`; the state (best loss, validations without improvement,
    reductions so far) is checkpointed."""

    name = "plateau"
    needs_validation = True

    def __init__(self, optimizer: torch.optim.Optimizer, plateau: PlateauConfig = PlateauConfig(), **_):
        self.optimizer = optimizer
        self.cfg = plateau
        self.best = math.inf
        self.bad_validations = 0
        self.reductions = 0

    def after_update(self) -> None:
        pass

    def after_validation(self, loss: float) -> None:
        # a non-finite loss never counts as an improvement
        improved = math.isfinite(loss) and (self.best == math.inf or loss < self.best - self.cfg.threshold * abs(self.best))
        if improved:
            self.best, self.bad_validations = float(loss), 0
            return
        self.bad_validations += 1
        if self.bad_validations >= self.cfg.patience:
            for group in self.optimizer.param_groups:
                group["lr"] = max(group["lr"] * self.cfg.factor, self.cfg.min_lr)
            self.bad_validations = 0
            self.reductions += 1

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_validations": self.bad_validations, "reductions": self.reductions}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.bad_validations = int(state["bad_validations"])
        self.reductions = int(state["reductions"])


def build_lr_schedule(name: str, optimizer: torch.optim.Optimizer, **options) -> LRSchedule:
    return LR_SCHEDULERS.get(name)(optimizer, **options)


__all__ = [
    "KLWarmup", "KL_WARMUPS", "LRSchedule", "LR_SCHEDULERS", "MultiStepSchedule", "PlateauConfig", "PlateauSchedule",
    "TemperatureSchedule", "build_lr_schedule",
]
