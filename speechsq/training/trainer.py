"""One generic trainer for every model of speechsq (speech and images alike).

It knows only the model contract (``model(batch, ctx) -> ModelOutput``, docs/ARCHITECTURE.md
section 4) and the batch-source contract (section 5); nothing here assumes speech.

Per step: Gumbel temperature and KL warm-up weight -> ``StepContext`` -> forward (under
``torch.autocast`` on CUDA when ``amp`` is bf16/fp16) -> non-finite check -> backward (with a
``GradScaler`` for fp16) -> gradient clipping -> Adam -> MultiStepLR.

Checkpoint keys: ``format, step, model, optimizer, scheduler, scaler, config, world_size,
processes`` (one ``{"batch_source", "rng"}`` entry per process) and ``metrics``.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from speechsq.quantizers import StepContext
from speechsq.training import distributed as D
from speechsq.training.checkpoint import atomic_save, load_checkpoint, prune_checkpoints, rng_state, seed_everything, set_rng_state
from speechsq.training.schedules import KLWarmup, TemperatureSchedule

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient; raised before the bad update is applied."""


@dataclass
class TrainerConfig:
    """``cfg.training`` (see speechsq/conf/training/paper.yaml for the paper values)."""

    steps: int = 500_000
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[int, ...] = (300_000, 400_000)
    gamma: float = 0.5
    grad_clip: float = 1.0
    temperature: TemperatureSchedule = field(default_factory=TemperatureSchedule)
    kl_warmup: KLWarmup = field(default_factory=KLWarmup)
    device: str = "auto"
    amp: str = "none"
    checkpoint_every: int = 20_000
    keep_checkpoints: int = 0
    log_every: int = 100
    progress: bool = True
    sync_batchnorm: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self):
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError(f"steps, checkpoint_every and log_every must be >= 1 (got {self.steps}, {self.checkpoint_every}, {self.log_every})")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"unknown training.amp {self.amp!r}; choose one of {tuple(AMP_DTYPES)}")
        if self.lr <= 0 or self.grad_clip < 0:
            raise ValueError(f"need lr > 0 and grad_clip >= 0 (0 disables clipping), got {self.lr}, {self.grad_clip}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "TrainerConfig":
        cfg = dict(cfg)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {', '.join(sorted(known))}")
        if "temperature" in cfg:
            cfg["temperature"] = TemperatureSchedule(**dict(cfg["temperature"]))
        if "kl_warmup" in cfg:
            cfg["kl_warmup"] = KLWarmup(**dict(cfg["kl_warmup"]))
        for key in ("betas", "milestones"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        return cls(**cfg)


def resolve_device(name: str, dist_ctx: D.DistContext | None = None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; each process gets its ``LOCAL_RANK`` GPU."""
    local = dist_ctx.local_rank if dist_ctx is not None else 0
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("training.device=cuda but no CUDA device is available; use training.device=cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local)
    return device


@dataclass
class TrainResult:
    step: int
    last_checkpoint: Path | None
    metrics: dict[str, float]


class Trainer:
    """Trains ``model`` on batches from ``source``; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        source,
        config: TrainerConfig,
        exp_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        dist_ctx: D.DistContext | None = None,
        seed: int = 0,
    ):
        self.cfg = config
        self.dist = dist_ctx or D.DistContext()
        self.device = resolve_device(config.device, self.dist)
        self.exp_dir = Path(exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.run_config = dict(run_config or {})
        self.seed = int(seed)
        self.source = source

        self.amp_dtype = AMP_DTYPES[config.amp] if self.device.type == "cuda" else None
        if config.amp != "none" and self.device.type != "cuda":
            log.warning("training.amp=%s ignored: mixed precision is used on CUDA only", config.amp)

        self.raw_model = model.to(self.device)
        self.model = D.wrap_model(self.raw_model, self.dist, self.device, config.sync_batchnorm, config.find_unused_parameters)
        self.raw_model = D.unwrap(self.model)  # SyncBatchNorm conversion may have replaced modules
        self.optimizer = torch.optim.Adam(self.raw_model.parameters(), lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(config.milestones), gamma=config.gamma)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None

        self.step = 0
        self.last_checkpoint: Path | None = None
        self._resumed = False
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        self._writer = None
        self._last_metrics: dict[str, float] = {}

    # ----- public -------------------------------------------------------------------------
    def resume(self, path: str | Path) -> None:
        """Restore everything from a checkpoint so training continues exactly."""
        state = load_checkpoint(path, map_location="cpu")
        try:
            self.raw_model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"checkpoint {path} does not fit this model (different config?): {err}") from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        processes = state.get("processes") or []
        if state.get("world_size") == self.dist.world_size and len(processes) == self.dist.world_size:
            mine = processes[self.dist.rank]
            if mine.get("batch_source") is not None and hasattr(self.source, "load_state_dict"):
                self.source.load_state_dict(mine["batch_source"])
            set_rng_state(mine["rng"], self.device)
        else:
            log.warning(
                "checkpoint was written by %s process(es), this run has %d: batches and random draws are re-seeded, "
                "so the continuation is not bit-exact", state.get("world_size"), self.dist.world_size,
            )
            seed_everything(self.seed + self.step, self.dist.rank)
        self.last_checkpoint = Path(path)
        self._resumed = True
        log.info("resumed from %s at step %d", path, self.step)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        if not self._resumed:
            seed_everything(self.seed, self.dist.rank)  # per-process streams (jitter, Gumbel noise)
        handler = self._open_logs()
        bar = self._progress_bar()
        self.model.train()
        try:
            while self.step < cfg.steps:
                batch = self._to_device(self.source.next_batch())
                loss_value, out = self._train_step(batch)
                self.step += 1
                self._accumulate(out)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._flush_logs()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            self._close_logs(handler)
        return TrainResult(step=self.step, last_checkpoint=self.last_checkpoint, metrics=dict(self._last_metrics))

    def save_checkpoint(self) -> Path | None:
        """Write ``step_N.pt`` and ``last.pt`` atomically (rank 0); every process takes part."""
        mine = {
            "batch_source": self.source.state_dict() if hasattr(self.source, "state_dict") else None,
            "rng": rng_state(self.device),
        }
        processes = D.gather_objects(mine, self.dist)
        path = None
        if self.dist.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "config": self.run_config,
                "world_size": self.dist.world_size,
                "processes": processes,
                "metrics": dict(self._last_metrics),
            }
            path = atomic_save(state, self.ckpt_dir / f"step_{self.step}.pt")
            atomic_save(state, self.ckpt_dir / "last.pt")
            prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
            log.info("checkpoint %s", path)
        D.barrier(self.dist)
        self.last_checkpoint = self.ckpt_dir / f"step_{self.step}.pt"
        return path

    # ----- one step -------------------------------------------------------------------------
    def step_context(self, step: int | None = None) -> StepContext:
        step = self.step if step is None else step
        return StepContext(step=step, temperature=self.cfg.temperature(step), kl_weight=self.cfg.kl_warmup(step))

    def _train_step(self, batch: dict[str, Tensor]):
        ctx = self.step_context()
        self.optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        with autocast:
            out = self.model(batch, ctx)
        loss_value = float(out.loss.detach())
        if not D.all_true(math.isfinite(loss_value), self.device):
            self._fail("loss", loss_value, out)
        if self.scaler is not None:
            self.scaler.scale(out.loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            out.loss.backward()
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        if self.cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.zeros(())
        out.metrics["grad_norm"] = grad_norm.detach()
        if self.scaler is not None:  # fp16: the scaler skips steps with inf gradients by design
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if not math.isfinite(float(grad_norm)):
                self._fail("gradient norm", float(grad_norm), out)
            self.optimizer.step()
        self.scheduler.step()
        return loss_value, out

    def _fail(self, what: str, value: float, out) -> None:
        terms = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in out.terms.items()) or "none reported"
        where = self.last_checkpoint if self.last_checkpoint is not None else "none written yet"
        message = (
            f"non-finite {what} at step {self.step} ({what}={value}); loss terms: {terms}. "
            f"Training stopped before applying this update; last good checkpoint: {where}"
        )
        log.error(message)
        raise NonFiniteLossError(message)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        non_blocking = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ----- logging ----------------------------------------------------------------------------
    def _accumulate(self, out) -> None:
        values = {"loss": out.loss.detach()}
        values.update({f"terms/{k}": v.detach() for k, v in out.terms.items()})
        values.update({f"metrics/{k}": v.detach() for k, v in out.metrics.items()})
        for k, v in values.items():
            v = v.float().reshape(())
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._count += 1

    def _flush_logs(self) -> None:
        if not self._count:
            return
        means = {k: float(v) / self._count for k, v in self._sums.items()}
        ctx = self.step_context(self.step - 1)
        means.update({"lr": self.optimizer.param_groups[0]["lr"], "temperature": ctx.temperature, "kl_weight": ctx.kl_weight})
        self._sums, self._count = {}, 0
        self._last_metrics = means
        if not self.dist.is_main:
            return
        if self._writer is not None:
            for k, v in means.items():
                self._writer.add_scalar(k, v, self.step)
            self._writer.flush()
        shown = ["loss", "metrics/mse", "metrics/quantizer/perplexity", "lr", "temperature"]
        log.info("step %d: %s", self.step, ", ".join(f"{k.split('/')[-1]}={means[k]:.5g}" for k in shown if k in means))

    def _open_logs(self):
        if not self.dist.is_main:
            return None
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.exp_dir / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but never fail training over logging
            log.warning("tensorboard is not installed; scalars go to the text log only")
        handler = logging.FileHandler(self.exp_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("speechsq")
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        return handler

    def _close_logs(self, handler) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if handler is not None:
            logging.getLogger("speechsq").removeHandler(handler)
            handler.close()

    def _progress_bar(self):
        if not (self.cfg.progress and self.dist.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.steps, initial=self.step, desc="train", dynamic_ncols=True, mininterval=1.0)
