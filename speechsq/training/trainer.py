"""One generic trainer for every model of speechsq (speech and images alike).

It knows only the model contract (``model(batch, ctx) -> ModelOutput``, docs/ARCHITECTURE.md
section 4) and the batch-source contract (section 5); nothing here assumes speech.

Per step: Gumbel temperature and KL warm-up weight -> ``StepContext`` -> forward (under
``torch.autocast`` on CUDA when ``amp`` is bf16/fp16) -> non-finite check -> backward (with a
``GradScaler`` for fp16) -> gradient clipping (the clipped gradients are what Adam sees) ->
Adam -> the LR scheduler's per-update step (``multistep``). Every ``validation.every``
updates (or epoch): the validation pass, whose loss drives the ``plateau`` scheduler. Every
``checkpoint_every`` updates: a checkpoint, then the model's media summaries (if it has a
``summaries`` hook). At the end: TensorBoard hparams with the final metrics.

Checkpoint (format 2, loadable with ``torch.load(weights_only=True)``) keys: ``format,
step, model, optimizer, scheduler`` (``{"name", "state"}``), ``scaler, config`` (the resolved
config, plain data), ``world_size, processes`` (one ``{"batch_source", "rng", "log_window"}``
per process: the log window is checkpointed so the first logged window after a resume
equals the uninterrupted run's), ``metrics`` (the last logged window and validation).
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import torch
from torch import Tensor, nn

from speechsq.quantizers import StepContext
from speechsq.training import distributed as D
from speechsq.training.checkpoint import (
    CHECKPOINT_FORMAT, atomic_save, load_checkpoint, prune_checkpoints, rng_state, seed_everything, set_rng_state,
)
from speechsq.training.config import ConfigError
from speechsq.training.lock import RunLock
from speechsq.training.schedules import LR_SCHEDULERS, KLWarmup, PlateauConfig, TemperatureSchedule, build_lr_schedule
from speechsq.training.summaries import write_hparams, write_media
from speechsq.training.validation import ValidationConfig, ValidationResult, run_validation

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient; raised before the bad update is applied."""


@dataclass
class TrainerConfig:
    """``cfg.training`` (see speechsq/conf/training/paper.yaml for the paper values); also the
    schema of that config node (speechsq.training.schema)."""

    steps: int = 500_000
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "multistep"
    milestones: tuple[int, ...] = (300_000, 400_000)
    gamma: float = 0.5
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    grad_clip: float = 1.0
    temperature: TemperatureSchedule = field(default_factory=TemperatureSchedule)
    kl_warmup: KLWarmup = field(default_factory=KLWarmup)
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    num_threads: Union[int, Literal["auto"]] = "auto"
    checkpoint_every: int = 20_000
    keep_checkpoints: int = 0
    log_every: int = 100
    progress: bool = True
    sync_batchnorm: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self):
        for key in ("steps", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"training.{key} must be >= 1, got {getattr(self, key)}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"unknown training.amp {self.amp!r}; choose one of {tuple(AMP_DTYPES)}")
        if self.lr <= 0:
            raise ValueError(f"training.lr must be > 0, got {self.lr}")
        if self.grad_clip < 0:
            raise ValueError(f"training.grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.scheduler not in LR_SCHEDULERS:
            raise ValueError(f"training.scheduler: unknown {self.scheduler!r}; choose one of {', '.join(LR_SCHEDULERS.names())}")
        self.temperature = self.temperature.for_run(self.steps)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "TrainerConfig":
        cfg = dict(cfg)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {', '.join(sorted(known))}")
        nested = {"temperature": TemperatureSchedule, "kl_warmup": KLWarmup, "plateau": PlateauConfig,
                  "validation": ValidationConfig}
        for key, kind in nested.items():
            if key in cfg:
                try:
                    cfg[key] = kind(**dict(cfg[key]))
                except (TypeError, ValueError, KeyError) as err:
                    raise ValueError(f"training.{key}: {err.args[0] if isinstance(err, KeyError) else err}") from None
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
    """Trains ``model`` on batches from ``source``; see the module docstring.

    ``validation_source``: held-out batches (``batches()``), or None. ``lock``: a held
    :class:`~speechsq.training.lock.RunLock` on ``exp_dir`` (``build_run`` passes one); without
    it, ``fit`` takes the lock itself. ``fit`` releases it when it returns or fails.
    """

    def __init__(
        self,
        model: nn.Module,
        source,
        config: TrainerConfig,
        exp_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        dist_ctx: D.DistContext | None = None,
        seed: int = 0,
        validation_source=None,
        lock: RunLock | None = None,
    ):
        self.cfg = config
        self.dist = dist_ctx or D.DistContext()
        self.device = resolve_device(config.device, self.dist)
        self.exp_dir = Path(exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.run_config = dict(run_config or {})
        self.seed = int(seed)
        self.source = source
        self.validation_source = validation_source
        self.lock = lock

        self.amp_dtype = AMP_DTYPES[config.amp] if self.device.type == "cuda" else None
        if config.amp != "none" and self.device.type != "cuda":
            log.warning("training.amp=%s ignored: mixed precision is used on CUDA only", config.amp)

        self.raw_model = model.to(self.device)
        self.model = D.wrap_model(self.raw_model, self.dist, self.device, config.sync_batchnorm, config.find_unused_parameters)
        self.raw_model = D.unwrap(self.model)  # SyncBatchNorm conversion may have replaced modules
        self.optimizer = torch.optim.Adam(self.raw_model.parameters(), lr=config.lr, betas=config.betas)
        self.lr_schedule = build_lr_schedule(config.scheduler, self.optimizer, milestones=config.milestones,
                                             gamma=config.gamma, plateau=config.plateau)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None
        self.validate_every = self._validation_interval()

        self.step = 0
        self.last_checkpoint: Path | None = None
        self._resumed = False
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        self._lr_used = config.lr
        self._writer = None
        self._last_metrics: dict[str, float] = {}
        self._last_validation: ValidationResult | None = None
        self._last_batch: dict[str, Any] | None = None
        self.pending_log_records: list[logging.LogRecord] = []  # set-up lines (build_run) for train.log

    def _validation_interval(self) -> int:
        every = self.cfg.validation.every
        needs = getattr(self.lr_schedule, "needs_validation", False)
        if self.validation_source is None:
            if needs:
                raise ConfigError(
                    f"training.scheduler={self.cfg.scheduler} follows the validation loss, but there is no validation "
                    "set (speech: data.valid_feats_dir; images: data.valid_split)"
                )
            if every:
                log.info("training.validation.every=%s but the data has no validation set: no validation pass", every)
            return 0
        if every == "epoch":
            per_epoch = getattr(self.source, "batches_per_epoch", None)
            if not isinstance(per_epoch, int) or per_epoch < 1:
                raise ConfigError(
                    "training.validation.every=epoch needs a batch source with a fixed number of batches per epoch "
                    f"(images); {type(self.source).__name__} has none: give a number of updates instead"
                )
            return per_epoch
        if needs and not every:
            raise ConfigError(f"training.scheduler={self.cfg.scheduler} follows the validation loss: set "
                              "training.validation.every (updates, or epoch)")
        return int(every)

    # ----- public -------------------------------------------------------------------------
    def resume(self, path: str | Path, allow_pickle: bool = False) -> None:
        """Restore everything from the checkpoint at ``path`` so training continues exactly."""
        self.restore(load_checkpoint(path, map_location="cpu", allow_pickle=allow_pickle), path)

    def restore(self, state: dict, path: str | Path) -> None:
        """Restore from an already loaded checkpoint ``state`` (read from ``path``)."""
        try:
            self.raw_model.load_state_dict(state["model"])
        except RuntimeError as err:
            first = str(err).strip().split("\n")
            detail = " ".join(line.strip() for line in first[:3])
            raise ConfigError(f"checkpoint {path} does not fit this model (different config?): {detail}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        scheduler = state.get("scheduler") or {}
        if "name" not in scheduler:  # format 1: a bare MultiStepLR state
            scheduler = {"name": "multistep", "state": scheduler}
        if scheduler["name"] == self.lr_schedule.name:
            self.lr_schedule.load_state_dict(scheduler["state"])
        else:
            log.warning("the checkpoint's LR scheduler was %s, this run uses %s: the new scheduler starts afresh "
                        "at the checkpoint's learning rate", scheduler["name"], self.lr_schedule.name)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        processes = state.get("processes") or []
        if state.get("world_size") == self.dist.world_size and len(processes) == self.dist.world_size:
            mine = processes[self.dist.rank]
            if mine.get("batch_source") is not None and hasattr(self.source, "load_state_dict"):
                self.source.load_state_dict(mine["batch_source"])
            set_rng_state(mine["rng"], self.device)
            window = mine.get("log_window")
            if window:
                self._sums = {k: v.to(self.device) for k, v in window["sums"].items()}
                self._count = int(window["count"])
        else:
            log.warning(
                "checkpoint was written by %s process(es), this run has %d: batches and random draws are re-seeded, "
                "so the continuation is not bit-exact", state.get("world_size"), self.dist.world_size,
            )
            seed_everything(self.seed + self.step, self.dist.rank)
        self._last_metrics = dict(state.get("metrics") or {})
        self.last_checkpoint = Path(path)
        self._resumed = True
        log.info("resumed from %s at step %d", path, self.step)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        if self.dist.is_main and self.lock is None:
            self.lock = RunLock(self.exp_dir).acquire()
        handler = None
        bar = None
        try:
            if not self._resumed:
                seed_everything(self.seed, self.dist.rank)  # per-process streams (jitter, Gumbel noise)
            handler = self._open_logs()
            bar = self._progress_bar()
            self.model.train()
            while self.step < cfg.steps:
                batch = self._to_device(self.source.next_batch())
                loss_value, out = self._train_step(batch)
                self.step += 1
                self._last_batch = batch
                self._accumulate(out)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._flush_logs()
                if self.validate_every and self.step % self.validate_every == 0:
                    self.lr_schedule.after_validation(self.validate().loss)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                    self._write_summaries()
            self._write_hparams()
        finally:
            if bar is not None:
                bar.close()
            self._close_logs(handler)
            if self.lock is not None:
                self.lock.release()
                self.lock = None
        return TrainResult(step=self.step, last_checkpoint=self.last_checkpoint, metrics=dict(self._last_metrics))

    def validate(self) -> ValidationResult:
        """One validation pass at the current step (logged, and kept for the checkpoint)."""
        result = run_validation(self.raw_model, self.validation_source.batches(), self.step_context(self.step), self.device,
                                self.step, self.dist, self.cfg.validation.max_batches)
        self._last_validation = result
        if not math.isfinite(result.loss):
            log.warning("step %d: the validation loss is %s", self.step, result.loss)
        if self.dist.is_main:
            if self._writer is not None:
                for key, value in result.values.items():
                    self._writer.add_scalar(f"valid/{key}", value, self.step)
                self._writer.flush()
            shown = ["loss", "metrics/mse", "metrics/quantizer/perplexity"]
            log.info("step %d: validation %s (%d examples)", self.step,
                     ", ".join(f"{k.split('/')[-1]}={result.values[k]:.5g}" for k in shown if k in result.values),
                     result.examples)
        return result

    def save_checkpoint(self) -> Path | None:
        """Write ``step_N.pt`` and ``last.pt`` atomically (rank 0); every process takes part."""
        mine = {
            "batch_source": self.source.state_dict() if hasattr(self.source, "state_dict") else None,
            "rng": rng_state(self.device),
            "log_window": {"sums": {k: v.detach().cpu() for k, v in self._sums.items()}, "count": self._count},
        }
        processes = D.gather_objects(mine, self.dist)
        path, failure = None, None
        if self.dist.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"name": self.lr_schedule.name, "state": self.lr_schedule.state_dict()},
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "config": self.run_config,
                "world_size": self.dist.world_size,
                "processes": processes,
                "metrics": self._checkpoint_metrics(),
            }
            try:
                path = atomic_save(state, self.ckpt_dir / f"step_{self.step}.pt")
                atomic_save(state, self.ckpt_dir / "last.pt")
            except BaseException as err:  # noqa: BLE001 - re-raised below, after the other processes know
                failure = err
                log.error("step %d: checkpoint not written (%s); the previous checkpoint %s is intact", self.step, err,
                          self.last_checkpoint or "(none yet)")
        if not D.all_true(failure is None, self.device):
            if failure is not None:
                raise failure
            raise RuntimeError(f"step {self.step}: the main process could not write the checkpoint")
        if self.dist.is_main:
            prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
            log.info("checkpoint %s", path)
        D.barrier(self.dist)
        self.last_checkpoint = self.ckpt_dir / f"step_{self.step}.pt"
        return path

    def _checkpoint_metrics(self) -> dict[str, float]:
        metrics = dict(self._last_metrics)
        if self._last_validation is not None:
            metrics.update({f"valid/{k}": v for k, v in self._last_validation.values.items()})
        return metrics

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
        if self.cfg.grad_clip > 0:  # scales the gradients in place: Adam sees the clipped ones
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.zeros(())
        out.metrics["grad_norm"] = grad_norm.detach()  # before clipping
        self._lr_used = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:  # fp16: the scaler skips steps with inf gradients by design
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if not math.isfinite(float(grad_norm)):
                self._fail("gradient norm", float(grad_norm), out)
            self.optimizer.step()
        self.lr_schedule.after_update()
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
        ctx = self.step_context(self.step - 1)  # the values the last update of the window used
        means.update({"lr": self._lr_used, "temperature": ctx.temperature, "kl_weight": ctx.kl_weight})
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

    def _summary_batch(self) -> dict[str, Any] | None:
        if self.validation_source is not None:
            first = next(iter(self.validation_source.batches()), None)
            if first is not None:
                return self._to_device(first)
        return self._last_batch

    def _write_summaries(self) -> None:
        hook = getattr(self.raw_model, "summaries", None)
        if not (self.dist.is_main and self._writer is not None and callable(hook)):
            return
        batch = self._summary_batch()
        if batch is None:
            return
        was_training = self.raw_model.training
        self.raw_model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                media = hook(batch)
            write_media(self._writer, media or {}, self.step)
        except Exception as err:  # noqa: BLE001 - logging must not stop a run
            log.warning("step %d: the model's summaries hook failed (%s: %s); nothing logged", self.step,
                        type(err).__name__, err)
        finally:
            self.raw_model.train(was_training)

    def _write_hparams(self) -> None:
        if self.dist.is_main and self._writer is not None:
            write_hparams(self._writer, self.run_config, self._checkpoint_metrics(), self.step)

    def _open_logs(self):
        if not self.dist.is_main:
            return None
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: the events an earlier, killed attempt logged after the step this run starts from are
            # dropped (those at a checkpoint's step were logged before it was written, and stay)
            self._writer = SummaryWriter(str(self.exp_dir / "tensorboard"), purge_step=self.step + 1)
        except ImportError:  # tensorboard is a dependency, but never fail training over logging
            log.warning("tensorboard is not installed; scalars go to the text log only")
        handler = logging.FileHandler(self.exp_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for record in self.pending_log_records:
            handler.handle(record)
        self.pending_log_records = []
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
