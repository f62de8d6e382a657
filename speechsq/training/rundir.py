"""The experiment directory of a run: which checkpoint to continue from, what to clean up,
and what to keep when starting over.

``resume`` (top-level config key) decides what a run does with the checkpoints already in
``<exp_dir>/checkpoints``:

* ``auto`` (the default, as fairseq/ESPnet): continue from the newest loadable checkpoint.
  ``last.pt`` first, unless a newer ``step_N.pt`` exists (a run killed between the two
  writes); a truncated or corrupt file is skipped with a warning and the next newest
  ``step_N.pt`` is used. No checkpoint: start from scratch.
* ``restart``: start from scratch; the previous run's ``checkpoints/``, ``tensorboard/``,
  ``train.log`` and ``config.yaml`` are moved (never deleted) to
  ``<exp_dir>/replaced/<UTC time>/``.
* a path: continue from that checkpoint. Refused when it lies outside ``exp_dir`` while
  ``exp_dir`` holds checkpoints of its own (they would be overwritten).

Before anything is written, the checkpoint's config is compared with the requested one
(:func:`check_compatible`): a different model or quantizer is a one-line error naming the
keys that differ; other differences are logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from speechsq.errors import MismatchError, SpeechsqError
from speechsq.training.checkpoint import CheckpointError, load_checkpoint, step_checkpoints, step_of

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "restart")
REPLACED_DIR = "replaced"
# what a training run writes into exp_dir, moved aside by resume=restart
RUN_OUTPUTS = ("checkpoints", "tensorboard", "train.log", "config.yaml")
# compared only for a log line on resume: they may change between the runs of one experiment
RUN_CONTROL_KEYS = ("resume", "exp_dir", "trust_checkpoint", "training.steps", "training.progress", "training.device",
                    "training.num_threads", "training.log_every", "training.checkpoint_every", "training.keep_checkpoints")
# parts of the quantizer node that are schedules of the training, not the model
SCHEDULE_KEYS = ("quantizer.temperature", "quantizer.kl_warmup", "quantizer.image_lr")


class ResumeError(SpeechsqError, ValueError):
    """The checkpoints of an experiment directory cannot be continued as asked."""


@dataclass
class ResumePlan:
    """What :func:`plan_resume` decided: a loaded checkpoint (or none) and whether the old
    run's files are moved aside before the new run writes."""

    state: dict | None = None
    path: Path | None = None
    move_aside: bool = False


class RunDir:
    def __init__(self, exp_dir: str | Path):
        self.root = Path(exp_dir)
        self.checkpoints = self.root / "checkpoints"

    def checkpoint_files(self) -> list[Path]:
        """``last.pt`` and every ``step_N.pt``."""
        files = step_checkpoints(self.checkpoints)
        last = self.checkpoints / "last.pt"
        return ([last] if last.is_file() else []) + files

    def remove_leftover_temporaries(self) -> list[Path]:
        """Delete ``.<name>.pt.*.tmp`` files of saves that a kill interrupted (under the run lock,
        so no other process is writing them)."""
        if not self.checkpoints.is_dir():
            return []
        leftovers = sorted(p for p in self.checkpoints.glob(".*.pt.*.tmp") if p.is_file())
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            log.info("removed %d leftover temporary checkpoint file(s) of an interrupted save: %s",
                     len(leftovers), ", ".join(p.name for p in leftovers))
        return leftovers

    def newest_loadable(self, allow_pickle: bool = False) -> tuple[dict, Path] | None:
        """The newest checkpoint that loads, skipping truncated/corrupt files with a warning."""
        last = self.checkpoints / "last.pt"
        skipped: list[str] = []
        state_last = None
        if last.is_file():
            try:
                state_last = load_checkpoint(last, allow_pickle=allow_pickle)
            except CheckpointError as err:
                log.warning("resume: %s; falling back to the newest loadable step_N.pt", err)
                skipped.append(last.name)
        newest_first = step_checkpoints(self.checkpoints)[::-1]
        if state_last is not None:  # only a step_N.pt written after last.pt (a kill between the two writes) beats it
            newest_first = [p for p in newest_first if step_of(p) > int(state_last["step"])]
        for path in newest_first:
            try:
                state = load_checkpoint(path, allow_pickle=allow_pickle)
            except CheckpointError as err:
                log.warning("resume: %s; trying an older checkpoint", err)
                skipped.append(path.name)
                continue
            why = "newer than last.pt" if state_last is not None else (
                f"unusable: {', '.join(skipped)}" if skipped else "last.pt is missing")
            log.warning("resume: continuing from %s (step %d; %s)", path, int(state["step"]), why)
            return state, path
        if state_last is not None:
            return state_last, last
        if skipped:
            raise ResumeError(
                f"none of the checkpoints in {self.checkpoints} can be loaded ({', '.join(skipped)}); "
                f"move them away, or start over with resume=restart (they are then moved to {self.root / REPLACED_DIR})"
            )
        return None

    def move_aside(self) -> Path | None:
        """Move the previous run's outputs to ``replaced/<UTC time>/`` (nothing is deleted)."""
        present = [self.root / name for name in RUN_OUTPUTS if (self.root / name).exists()]
        if not present:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = self.root / REPLACED_DIR / stamp
        n = 1
        while target.exists():
            n += 1
            target = self.root / REPLACED_DIR / f"{stamp}-{n}"
        target.mkdir(parents=True)
        for path in present:
            path.rename(target / path.name)
        log.warning("resume=restart: the previous run's %s moved to %s", ", ".join(p.name for p in present), target)
        return target


def plan_resume(resume: str, run_dir: RunDir, allow_pickle: bool = False) -> ResumePlan:
    """Decide where the run starts (see the module docstring); loads the checkpoint."""
    resume = str(resume)
    if resume == "restart":
        has_outputs = any((run_dir.root / name).exists() for name in RUN_OUTPUTS)
        return ResumePlan(move_aside=has_outputs)
    if resume == "auto":
        found = run_dir.newest_loadable(allow_pickle)
        if found is None:
            log.info("resume=auto: no checkpoint in %s yet, starting from scratch", run_dir.checkpoints)
            return ResumePlan()
        return ResumePlan(state=found[0], path=found[1])
    path = Path(resume)
    if not path.is_file():
        raise ResumeError(f"resume={resume}: no such checkpoint (use resume=auto to continue {run_dir.root}, "
                          "resume=restart to start over)")
    own = run_dir.checkpoint_files()
    if own and path.resolve().parent != run_dir.checkpoints.resolve():
        raise ResumeError(
            f"resume={resume}: {run_dir.root} already holds checkpoints of another run ({own[-1].name}), which "
            f"continuing from {path} would overwrite; train into another exp_dir, or add resume=restart first"
        )
    return ResumePlan(state=load_checkpoint(path, allow_pickle=allow_pickle), path=path)


# ----- does a checkpoint fit the requested run? ------------------------------------------------
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, full))
        else:
            out[full] = value
    return out


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every flattened key that differs."""
    a, b = flatten(old), flatten(new)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out.append((key, "(absent)" if va is missing else va, "(absent)" if vb is missing else vb))
    return out


def _show(diffs: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} requested" for k, a, b in diffs[:limit])
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return shown + more


def check_compatible(checkpoint_config: Mapping, run_config: Mapping, path: Path) -> None:
    """A one-line :class:`MismatchError` when the checkpoint's model/quantizer differ from the
    requested ones; other differences go to the log."""
    diffs = config_differences(checkpoint_config, run_config)
    model = [d for d in diffs if _under(d[0], ("model", "quantizer")) and not _under(d[0], SCHEDULE_KEYS)]
    if model:
        raise MismatchError(
            f"checkpoint {path} does not fit the requested model ({len(model)} key(s) differ: {_show(model)}); "
            f"train into another exp_dir, or start over here with resume=restart (the old run is moved to "
            f"{path.parent.parent / REPLACED_DIR})"
        )
    others = [d for d in diffs if not _under(d[0], RUN_CONTROL_KEYS)]
    if others:
        log.warning("resuming from %s with settings that differ from the checkpoint's (the optimizer, scheduler and "
                    "batch-source states continue from the checkpoint): %s", path, _show(others, limit=20))
