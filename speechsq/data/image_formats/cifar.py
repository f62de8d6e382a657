"""CIFAR-10 "python version" batches (https://www.cs.toronto.edu/~kriz/cifar.html).

``data_batch_1`` .. ``data_batch_5`` and ``test_batch``: pickles holding ``data``
(N, 3072) uint8 rows (1024 red, 1024 green, 1024 blue values, row-major 32x32) and
``labels``. The directory may be ``root`` itself or ``root/cifar-10-batches-py``.

These are pickles, as distributed by the dataset's authors: only open files you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from speechsq.data.image_formats.errors import ImageDataError

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
CIFAR_SIDE = 32


def cifar_dir(root: str | Path) -> Path:
    root = Path(root)
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    raise ImageDataError(
        f"{root}: not a CIFAR-10 python directory (expected data_batch_1..5 and test_batch, "
        "here or in cifar-10-batches-py/)"
    )


def _get(d: dict, key: str):
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise KeyError(key)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    path = Path(path)
    if not path.is_file():
        raise ImageDataError(f"{path}: CIFAR-10 batch file is missing")
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = np.asarray(_get(batch, "data")), np.asarray(_get(batch, "labels"))
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise ImageDataError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from err
    row = 3 * CIFAR_SIDE * CIFAR_SIDE
    if data.ndim != 2 or data.shape[1] != row:
        channels = data.shape[1] / (CIFAR_SIDE * CIFAR_SIDE) if data.ndim == 2 else "?"
        raise ImageDataError(
            f"{path}: CIFAR-10 rows must hold {row} values (3 channels x 32 x 32), got shape {data.shape} "
            f"({channels} channels)"
        )
    if len(labels) != len(data):
        raise ImageDataError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.astype(np.uint8).reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), labels.astype(np.int64)


def read_cifar10(root: str | Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """``part``: ``train`` (the five training batches, in order) or ``test``."""
    directory = cifar_dir(root)
    names = CIFAR10_TRAIN_BATCHES if part == "train" else CIFAR10_TEST_BATCHES
    parts = [read_cifar_batch(directory / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
