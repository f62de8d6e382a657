"""MNIST / Fashion-MNIST directories of IDX files.

Accepted layouts: the four files directly in ``root``, or in ``root/raw`` /
``root/MNIST/raw`` / ``root/FashionMNIST/raw`` (torchvision's layout); each file gzipped
or not; ``train-images-idx3-ubyte`` or the ``train-images.idx3-ubyte`` spelling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speechsq.data.image_formats.errors import ImageDataError
from speechsq.data.image_formats.idx import read_idx

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")


def _spellings(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte
    return [name + gz for name in (stem, dotted) for gz in ("", ".gz")]


def find_idx_file(root: Path, stem: str) -> Path:
    for sub in _SUBDIRS:
        for name in _spellings(stem):
            candidate = root / sub / name
            if candidate.is_file():
                return candidate
    raise ImageDataError(
        f"{root}: no {stem}[.gz] found (looked in {', '.join(repr(s or '.') for s in _SUBDIRS)}); "
        "an MNIST/Fashion-MNIST directory holds the four IDX files "
        f"{', '.join(n for pair in MNIST_FILES.values() for n in pair)}"
    )


def read_mnist(root: str | Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """``part`` is ``train`` or ``test`` (the official files). Returns uint8 images
    (N, 28, 28) and int64 labels (N,)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageDataError(f"{root}: MNIST directory does not exist")
    image_stem, label_stem = MNIST_FILES[part]
    images = read_idx(find_idx_file(root, image_stem))
    labels = read_idx(find_idx_file(root, label_stem))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ImageDataError(f"{root}: {image_stem} must hold uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ImageDataError(f"{root}: {label_stem} holds {labels.shape} labels for {len(images)} images")
    return images, labels.astype(np.int64)
