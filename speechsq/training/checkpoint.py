"""Atomic checkpoint files and the random-number-generator state they carry.

A checkpoint is one ``torch.save`` dict (see :class:`speechsq.training.Trainer` for its keys).
Writes are atomic: the file is written to a temporary name in the same directory, flushed to
disk, and moved over the target with ``os.replace``, so a crash or a full disk mid-write never
leaves a truncated ``last.pt`` behind: the previous checkpoint stays intact.

Checkpoints hold numpy RNG states and plain Python objects, so they are loaded with
``weights_only=False``: load only checkpoints you trust (your own runs).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` that either fully succeeds or leaves ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path} cannot be read (truncated or not a speechsq checkpoint): {err}") from err
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise ValueError(f"{path} is not a speechsq checkpoint (no model/step entries)")
    return state


def rng_state(device: torch.device | None = None) -> dict:
    """Python, numpy, torch (CPU) and, on CUDA, the device generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch (all devices). ``rank`` gives each process its own stream."""
    value = int(seed) + 1_000_003 * int(rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Keep the ``keep`` newest ``step_N.pt`` files (``keep <= 0``: keep all); never ``last.pt``."""
    if keep <= 0:
        return
    files = sorted(Path(directory).glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)
