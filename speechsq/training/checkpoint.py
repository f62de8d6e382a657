"""Checkpoint files: atomic, readable by colleagues, and loadable without running code.

A checkpoint is one ``torch.save`` dict (see :class:`speechsq.training.Trainer` for its keys)
that holds **only tensors and plain containers** (dict, list, tuple, str, int, float, bool,
None): the config as plain data, the numpy RNG state as a tensor, batch-source states as
plain values. So :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``,
which refuses anything that would need unpickling code (a crafted file cannot run code when
it is loaded). Loading a file that needs unpickling (checkpoints of speechsq before format 2
held pickled numpy state) is an explicit opt-in, ``allow_pickle=True`` (``--trust-checkpoint``
on the command line), with a warning.

Writes are atomic: the file is written to a temporary name in the same directory, flushed to
disk, given the permissions the umask gives a new file (not mkstemp's 0600, so colleagues
on a shared cluster can read it), and moved over the target with ``os.replace``. A crash or
a full disk mid-write never leaves a truncated file behind: the previous checkpoint stays
intact, and a full disk raises :class:`~speechsq.errors.DiskFullError` naming the file.
"""

from __future__ import annotations

import logging
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechsq.completion import atomic_write
from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 1: numpy RNG state pickled (needs allow_pickle); 2: weights_only-loadable
TRUST_HINT = "allow_pickle=True in Python, --trust-checkpoint on the command line, trust_checkpoint=true for `speechsq train`"


class CheckpointError(SpeechsqError, ValueError):
    """A file that is not a readable speechsq checkpoint (truncated, corrupt, something else)."""


class UnsafeCheckpointError(SpeechsqError, ValueError):
    """A checkpoint that can only be loaded by unpickling (which can run code from the file)."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` that either fully succeeds or leaves ``path`` untouched
    (:func:`speechsq.completion.atomic_write`: umask permissions, DiskFullError on ENOSPC)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", allow_pickle: bool = False) -> dict:
    """Read a checkpoint with ``weights_only=True`` (``allow_pickle=True``: unpickle, with a warning)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # garbage or a truncated legacy pickle, not a refused class or function
            raise CheckpointError(f"checkpoint {path} cannot be read (truncated or not a speechsq checkpoint): {err}") from None
        if not allow_pickle:
            raise unsafe_checkpoint_error(path, err) from None
        log.warning("loading %s by unpickling (allow_pickle=True): this can run code stored in the file; do it only for "
                    "files you trust", path)
        state = _load_pickled(path, map_location)
    except Exception as err:  # noqa: BLE001 - truncated zips raise RuntimeError, garbage IndexError/EOFError, ...
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or not a speechsq checkpoint): "
                              f"{type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a speechsq checkpoint (no model/step entries)")
    return state


def _load_pickled(path: Path, map_location) -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(err).__name__}: {err}") from None


def unsafe_checkpoint_error(path: Path, err: BaseException) -> UnsafeCheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" (it refers to {found.group(1)})" if found else ""
    older = ""
    if found and found.group(1).startswith("numpy"):
        older = ("; it looks like a checkpoint of an older speechsq (format 1, numpy RNG state pickled): if it is your "
                 "own, load it once with the opt-in and re-save it, e.g. `speechsq export-model --trust-checkpoint "
                 "--checkpoint PATH --out DIR`")
    return UnsafeCheckpointError(
        f"{path} can only be loaded by unpickling{what}, which can run code stored in the file{older}; "
        f"load it only if you trust its source: {TRUST_HINT}"
    )


# ----- random-number-generator state, as plain data -------------------------------------------
def rng_state(device: torch.device | None = None) -> dict:
    """Python, numpy, torch (CPU) and, on CUDA, the device generator states (plain data)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),  # (version, tuple of ints, None): plain containers
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = np.asarray(numpy_state["keys"], dtype=np.int64).astype(np.uint32)
        np.random.set_state((numpy_state["name"], keys, numpy_state["pos"], numpy_state["has_gauss"],
                             numpy_state["cached_gaussian"]))
    else:  # format 1: numpy's own tuple
        np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch (all devices). ``rank`` gives each process its own stream."""
    value = int(seed) + 1_000_003 * int(rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


# ----- the files of a checkpoint directory ----------------------------------------------------
def step_of(path: Path) -> int | None:
    """N for ``step_N.pt``; None for any other name."""
    found = re.fullmatch(r"step_(\d+)\.pt", path.name)
    return int(found.group(1)) if found else None


def step_checkpoints(directory: str | Path) -> list[Path]:
    """The ``step_N.pt`` files of ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if step_of(p) is not None]
    return sorted(files, key=step_of)


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Keep the ``keep`` newest ``step_N.pt`` files (``keep <= 0``: keep all); never ``last.pt``."""
    if keep <= 0:
        return
    for old in step_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
