"""Image datasets for the shared trainer: one interface, many on-disk formats.

>>> split = load_image_dataset("digits", "train")                 # no download needed
>>> split = load_image_dataset("mnist", "valid", root="data/mnist")
>>> split = load_image_dataset("gray_celeba", "test", root="data/celeba", pixels="categorical")
>>> source = ImageBatchSource(split, batch_size=32, seed=0, rank=0, world_size=1)
>>> batch = source.next_batch()      # {"images": ..., "labels": ...}

Pixels are either

* ``continuous``: float32 ``(B, C, H, W)`` in [0, 1] (grey value / (levels - 1)), for the
  Gaussian decoder with a sigmoid output; or
* ``categorical``: int64 ``(B, H, W)`` category ids, for the categorical and vMF decoders:
  the grey level itself for single-channel images (256 categories; 17 for digits) or
  the class of a segmentation map (19 for CelebAMask-HQ).

Splits are ``train``, ``valid`` and ``test``. Where the papers hold out a validation set
from the official training set (MNIST, Fashion-MNIST, CIFAR-10: SQ-VAE App. E.1.1), the
*last* ``valid_size`` (10,000) training images form ``valid`` and are removed from
``train``; CelebA uses its official partition file.

The embedded default ``digits`` is scikit-learn's bundled 8x8 digits (1,797 images,
17 grey levels 0..16, 10 classes): each pixel is repeated into a ``upsample`` x
``upsample`` block (default 2 -> 16x16, so the stride-4 networks give a 4x4 latent grid;
no interpolation, so the 17 levels stay exact), continuous values are level / 16, and a
fixed permutation (seed 0) gives 1,297 train / 200 valid / 300 test images.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from speechsq.data import BATCH_SOURCES, per_process_batch_size
from speechsq.data.image_formats import celeba as celeba_fmt
from speechsq.data.image_formats.cifar import read_cifar10
from speechsq.data.image_formats.errors import ImageDataError
from speechsq.data.image_formats.mnist import read_mnist
from speechsq.data.image_formats.pictures import PictureSpec, check_category_ids, list_pictures, read_label_map, read_picture
from speechsq.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
PIXEL_KINDS = ("continuous", "categorical")
PAPER_VALID_SIZE = 10_000


# ----- pixel stores: in memory or decoded from files on demand ------------------------------
class PixelStore(Protocol):
    sample_shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def take(self, indices: np.ndarray) -> np.ndarray: ...


@dataclass
class ArrayStore:
    """Images already in memory: uint8 (N, C, H, W) or (N, H, W) for label maps."""

    array: np.ndarray

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    def __len__(self) -> int:
        return len(self.array)

    def take(self, indices: np.ndarray) -> np.ndarray:
        return self.array[indices]


@dataclass
class FileStore:
    """One file per image, decoded when a batch asks for it (CelebA's 200k JPEGs need not
    fit in memory). Errors name the offending file."""

    keys: list
    read: Callable[[object], np.ndarray]
    sample_shape: tuple[int, ...]
    cache: bool = False  # keep decoded images in memory (CelebA 64x64: 12 kB per image)

    def __post_init__(self):
        self._decoded: np.ndarray | None = None
        self._done: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, indices: np.ndarray) -> np.ndarray:
        if self.cache and self._decoded is None:
            self._decoded = np.empty((len(self.keys), *self.sample_shape), dtype=np.uint8)
            self._done = np.zeros(len(self.keys), dtype=bool)
        out = np.empty((len(indices), *self.sample_shape), dtype=np.uint8)
        for row, i in enumerate(np.asarray(indices).reshape(-1)):
            i = int(i)
            if self.cache and self._done[i]:
                out[row] = self._decoded[i]
                continue
            item = self.read(self.keys[i])
            if item.shape != self.sample_shape:
                raise ImageDataError(f"{self.keys[i]}: decoded to shape {item.shape}, expected {self.sample_shape}")
            out[row] = item
            if self.cache:
                self._decoded[i], self._done[i] = item, True
        return out


def subset(store: PixelStore, indices: np.ndarray) -> PixelStore:
    if isinstance(store, ArrayStore):
        return ArrayStore(store.array[indices])
    if isinstance(store, FileStore):
        return FileStore([store.keys[int(i)] for i in indices], store.read, store.sample_shape, store.cache)
    raise TypeError(f"cannot subset {type(store).__name__}")


# ----- what a format loader returns ---------------------------------------------------------
@dataclass
class RawImages:
    """pixels: uint8 values in [0, num_values); (C, H, W) per image, or (H, W) for label
    maps (``label_map=True``: unordered categories, no continuous meaning)."""

    pixels: PixelStore
    labels: np.ndarray | None
    num_values: int
    label_map: bool = False


@dataclass
class ImageSplit:
    """One split of one dataset, ready for batching."""

    dataset: str
    split: str
    pixels: PixelStore
    labels: np.ndarray | None
    kind: str
    num_values: int
    label_map: bool = False

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def num_categories(self) -> int | None:
        """Categories of a categorical split (grey levels or classes); None if continuous."""
        return self.num_values if self.kind == "categorical" else None

    @property
    def channels(self) -> int:
        return 1 if self.label_map else self.pixels.sample_shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.pixels.sample_shape[-2:])

    def tensors(self, indices: np.ndarray) -> dict[str, Tensor]:
        """The batch dict for the given image indices (no augmentation)."""
        raw = self.pixels.take(np.asarray(indices))
        batch = {"images": to_tensor(raw, self)}
        if self.labels is not None:
            batch["labels"] = torch.as_tensor(self.labels[np.asarray(indices)], dtype=torch.long)
        return batch

    def verify(self) -> None:
        """Decode every image once (finds corrupt files before a long run)."""
        for start in range(0, len(self), 256):
            self.pixels.take(np.arange(start, min(start + 256, len(self))))


def to_tensor(raw: np.ndarray, split: ImageSplit) -> Tensor:
    if split.kind == "categorical":
        ids = raw if split.label_map else raw[:, 0]
        return torch.from_numpy(np.ascontiguousarray(ids)).long()
    return torch.from_numpy(np.ascontiguousarray(raw)).float() / float(split.num_values - 1)


# ----- the dataset registry -----------------------------------------------------------------
@dataclass
class DatasetEntry:
    """load(root, split, **options) -> RawImages; needs_root: False for embedded data."""

    load: Callable[..., RawImages]
    needs_root: bool = True
    description: str = ""


IMAGE_DATASETS: Registry[DatasetEntry] = Registry("image dataset")


def register_dataset(name: str, needs_root: bool = True, description: str = ""):
    def wrap(fn: Callable[..., RawImages]) -> Callable[..., RawImages]:
        IMAGE_DATASETS.register(name)(DatasetEntry(fn, needs_root, description or (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return wrap


def load_image_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    pixels: str = "continuous",
    limit: int | None = None,
    cache: bool = False,
    **options,
) -> ImageSplit:
    """Load one split of a registered dataset.

    pixels: ``continuous`` or ``categorical`` (see the module docstring).
    limit: keep only the first ``limit`` images (quick runs).
    cache: keep images decoded from files in memory after their first use.
    options: format-specific (``valid_size``, ``size``, ``crop``, ``upsample`` ...).
    """
    if split not in SPLITS:
        raise ImageDataError(f"split must be one of {SPLITS}, got {split!r}")
    if pixels not in PIXEL_KINDS:
        raise ImageDataError(f"pixels must be one of {PIXEL_KINDS}, got {pixels!r}")
    try:
        entry = IMAGE_DATASETS.get(name)
    except KeyError as err:
        raise ImageDataError(err.args[0]) from None
    if entry.needs_root:
        if root is None:
            raise ImageDataError(f"dataset {name!r} is read from disk: give its directory (data.root=...)")
        root = Path(root).expanduser()
        if not root.exists():
            raise ImageDataError(f"{root}: dataset directory for {name!r} does not exist")
    accepted = [p for p in inspect.signature(entry.load).parameters if p not in ("root", "split")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ImageDataError(f"dataset {name!r} does not take option(s) {unknown}; it accepts: {', '.join(accepted) or 'none'}")
    raw = entry.load(root, split, **options)
    if raw.label_map and pixels == "continuous":
        raise ImageDataError(f"dataset {name!r} holds label maps (unordered categories): use pixels=categorical")
    if pixels == "categorical" and not raw.label_map and raw.pixels.sample_shape[0] != 1:
        raise ImageDataError(
            f"dataset {name!r} has {raw.pixels.sample_shape[0]} channels; categorical pixels need one channel of grey "
            "levels (e.g. gray_celeba) or a label map"
        )
    store, labels = raw.pixels, raw.labels
    if limit is not None and limit < len(store):
        keep = np.arange(int(limit))
        store, labels = subset(store, keep), None if labels is None else labels[keep]
    if len(store) == 0:
        raise ImageDataError(f"dataset {name!r}: the {split} split is empty")
    if isinstance(store, FileStore):
        store.cache = bool(cache)
    return ImageSplit(name, split, store, labels, pixels, raw.num_values, raw.label_map)


def hold_out_last(n_train: int, split: str, valid_size: int, what: str) -> np.ndarray:
    """Indices into the official training set for ``train`` / ``valid``: the last
    ``valid_size`` images are the validation set (as SQ-VAE App. E.1.1 holds out 10,000)."""
    if not 0 < valid_size < n_train:
        raise ImageDataError(f"{what}: cannot hold out {valid_size} validation images from {n_train} training images")
    cut = n_train - valid_size
    return np.arange(cut) if split == "train" else np.arange(cut, n_train)


def seeded_fractions(n: int, split: str, valid_fraction: float, test_fraction: float, what: str) -> np.ndarray:
    """A fixed (seed 0) split for sources without an official one."""
    order = np.random.default_rng(0).permutation(n)
    n_test, n_valid = int(round(n * test_fraction)), int(round(n * valid_fraction))
    if n - n_test - n_valid <= 0:
        raise ImageDataError(f"{what}: {n} images are too few for valid={valid_fraction}, test={test_fraction}")
    parts = {"test": order[:n_test], "valid": order[n_test : n_test + n_valid], "train": order[n_test + n_valid :]}
    return np.sort(parts[split])


# ----- the formats --------------------------------------------------------------------------
@register_dataset("digits", needs_root=False, description="scikit-learn's bundled 8x8 digits (no download)")
def load_digits_dataset(root, split: str, upsample: int = 2, num_valid: int = 200, num_test: int = 300) -> RawImages:
    """scikit-learn's bundled 8x8 digits, 17 grey levels, upsampled by pixel repetition."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    levels = digits.images.astype(np.uint8)  # exact integers 0..16
    upsample = int(upsample)
    if upsample < 1:
        raise ImageDataError(f"digits: upsample must be >= 1, got {upsample}")
    images = levels.repeat(upsample, axis=1).repeat(upsample, axis=2)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    parts = {"test": order[:num_test], "valid": order[num_test : num_test + num_valid], "train": order[num_test + num_valid :]}
    idx = np.sort(parts[split])
    return RawImages(ArrayStore(images[idx]), digits.target[idx].astype(np.int64), num_values=17)


def _mnist_like(root, split: str, valid_size: int, what: str) -> RawImages:
    images, labels = read_mnist(root, "test" if split == "test" else "train")
    if split != "test":
        keep = hold_out_last(len(images), split, valid_size, what)
        images, labels = images[keep], labels[keep]
    return RawImages(ArrayStore(images[:, None]), labels, num_values=256)


@register_dataset("mnist")
def load_mnist_dataset(root, split: str, valid_size: int = PAPER_VALID_SIZE) -> RawImages:
    """MNIST IDX files (.gz or not); the last 10,000 training images are the validation set."""
    return _mnist_like(root, split, valid_size, f"mnist {root}")


@register_dataset("fashion_mnist")
def load_fashion_mnist_dataset(root, split: str, valid_size: int = PAPER_VALID_SIZE) -> RawImages:
    """Fashion-MNIST IDX files (same layout as MNIST)."""
    return _mnist_like(root, split, valid_size, f"fashion_mnist {root}")


@register_dataset("cifar10")
def load_cifar10_dataset(root, split: str, valid_size: int = PAPER_VALID_SIZE) -> RawImages:
    """CIFAR-10 python batches; the last 10,000 training images (data_batch_5) are the validation set."""
    images, labels = read_cifar10(root, "test" if split == "test" else "train")
    if split != "test":
        keep = hold_out_last(len(images), split, valid_size, f"cifar10 {root}")
        images, labels = images[keep], labels[keep]
    return RawImages(ArrayStore(images), labels, num_values=256)


def _celeba(root, split: str, mode: str, crop: int, size: int) -> RawImages:
    spec = PictureSpec(mode=mode, crop=crop, size=size)
    files = celeba_fmt.celeba_split_files(root, split)
    first = read_picture(files[0], spec)  # fail early on an unreadable directory
    return RawImages(FileStore(files, lambda p: read_picture(p, spec), first.shape), None, num_values=256)


@register_dataset("celeba")
def load_celeba_dataset(root, split: str, crop: int = 140, size: int = 64) -> RawImages:
    """CelebA aligned images + list_eval_partition.txt; centre crop 140, bilinear resize to 64."""
    return _celeba(root, split, "RGB", crop, size)


@register_dataset("gray_celeba")
def load_gray_celeba_dataset(root, split: str, crop: int = 140, size: int = 64) -> RawImages:
    """Gray-CelebA (SQ-VAE E.3.1): CelebA converted to grey, then cropped and resized; 256 levels."""
    return _celeba(root, split, "L", crop, size)


@register_dataset("celeba_mask")
def load_celeba_mask_dataset(
    root, split: str, size: int = 64, valid_fraction: float = 0.1, test_fraction: float = 0.1, partition: str = "seeded"
) -> RawImages:
    """CelebAMask-HQ segmentation maps, 19 categories, nearest resize to 64x64.

    ``partition``: ``seeded`` (a fixed seeded split of all masks by face index) or ``folders``
    (the dataset's own ``train_label/ val_label/ test_label/`` folders, as the SQ-VAE code reads them).
    """
    n = celeba_fmt.CELEBA_MASK_CATEGORIES
    if partition == "folders":
        files = celeba_fmt.celeba_mask_partition_files(root, split)
        read_file = lambda path: read_label_map(path, n, size)  # noqa: E731
        return RawImages(FileStore(files, read_file, read_file(files[0]).shape), None, num_values=n, label_map=True)
    if partition != "seeded":
        raise ImageDataError(f"celeba_mask: unknown partition {partition!r}; choose seeded or folders")
    kind, items = celeba_fmt.celeba_mask_sources(root)
    # No official split ships with the masks: a fixed seeded split by face index.
    keep = seeded_fractions(len(items), split, valid_fraction, test_fraction, f"celeba_mask {root}")
    items = [items[i] for i in keep]
    if kind == "combined":
        read = lambda path: read_label_map(path, n, size)  # noqa: E731
    else:
        anno = kind.split(":", 1)[1]
        read = lambda index: _resize_ids(celeba_fmt.combine_part_masks(anno, index), size)  # noqa: E731
    first = read(items[0])
    return RawImages(FileStore(items, read, first.shape), None, num_values=n, label_map=True)


def _resize_ids(ids: np.ndarray, size: int | None) -> np.ndarray:
    from PIL import Image

    if size is None or ids.shape == (size, size):
        return ids
    return np.asarray(Image.fromarray(ids).resize((size, size), Image.NEAREST))


@register_dataset("image_folder")
def load_image_folder_dataset(
    root,
    split: str,
    mode: str = "RGB",
    crop: int | None = None,
    size: int | None = None,
    label_maps: bool = False,
    num_categories: int | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> RawImages:
    """Any folder of images (recursive). Class sub-folders give labels; ``label_maps=True``
    reads single-channel PNGs of category ids (``num_categories`` required)."""
    root = Path(root)
    files = list_pictures(root)
    if not files:
        raise ImageDataError(f"{root}: no image files ({', '.join(('png', 'jpg', 'bmp', '...'))}) in this folder")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    labels = None
    if len(classes) >= 2 and all(len(p.relative_to(root).parts) == 2 for p in files):
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[p.relative_to(root).parts[0]] for p in files], dtype=np.int64)
    keep = seeded_fractions(len(files), split, valid_fraction, test_fraction, f"image_folder {root}")
    files = [files[i] for i in keep]
    labels = None if labels is None else labels[keep]
    if label_maps:
        if not num_categories:
            raise ImageDataError("image_folder with label_maps=True needs num_categories")
        read = lambda p: read_label_map(p, int(num_categories), size)  # noqa: E731
        first = read(files[0])
        return RawImages(FileStore(files, read, first.shape), labels, num_values=int(num_categories), label_map=True)
    spec = PictureSpec(mode=mode, crop=crop, size=size)
    first = read_picture(files[0], spec)

    def read_same_size(path):
        item = read_picture(path, spec)
        if item.shape != first.shape:
            raise ImageDataError(
                f"{path}: image is {item.shape[2]}x{item.shape[1]} but the folder's first image is "
                f"{first.shape[2]}x{first.shape[1]}; pass size=... to resize every image"
            )
        return item

    return RawImages(FileStore(files, read_same_size, first.shape), labels, num_values=256)


@register_dataset("npz")
def load_npz_dataset(
    root,
    split: str,
    layout: str = "nhwc",
    label_maps: bool = False,
    num_values: int = 256,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> RawImages:
    """An .npz of integer images: keys x_train/x_test[/x_valid] (+ y_*), Keras style, or
    images[+labels] split by fixed fractions. Layout ``nhwc`` (N, H, W[, C]) or ``nchw``."""
    path = Path(root)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ImageDataError(f"{path}: cannot read .npz archive ({err})") from err
    with archive:
        keys = set(archive.files)
        if split in ("train", "valid") and "x_train" in keys and "x_valid" not in keys:
            # no validation array: hold out the last valid_fraction of x_train
            x, y = archive["x_train"], archive["y_train"] if "y_train" in keys else None
            keep = hold_out_last(len(x), split, max(1, int(round(len(x) * valid_fraction))), f"npz {path}")
            images, labels = x[keep], None if y is None else y[keep]
        elif f"x_{split}" in keys:
            images, labels = archive[f"x_{split}"], archive[f"y_{split}"] if f"y_{split}" in keys else None
        elif "images" in keys:
            x, y = archive["images"], archive["labels"] if "labels" in keys else None
            keep = seeded_fractions(len(x), split, valid_fraction, test_fraction, f"npz {path}")
            images, labels = x[keep], None if y is None else y[keep]
        else:
            raise ImageDataError(f"{path}: no x_{split} (or x_train, or images) array; keys are {sorted(keys)}")
    images = _check_npz_images(images, layout, label_maps, num_values, path)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(labels) != len(images):
            raise ImageDataError(f"{path}: {len(labels)} labels for {len(images)} images in the {split} split")
    return RawImages(ArrayStore(images), labels, num_values=int(num_values), label_map=label_maps)


def _check_npz_images(images: np.ndarray, layout: str, label_maps: bool, num_values: int, path: Path) -> np.ndarray:
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.integer):
        raise ImageDataError(f"{path}: images must be integer pixel values (e.g. uint8), got {images.dtype}")
    if images.size and (images.min() < 0 or images.max() >= num_values):
        raise ImageDataError(f"{path}: pixel values must lie in [0, {num_values}), found [{images.min()}, {images.max()}]")
    if label_maps:
        if images.ndim != 3:
            raise ImageDataError(f"{path}: label maps must be (N, H, W), got shape {images.shape}")
        check_category_ids(images, num_values, str(path))
        return images.astype(np.uint8)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        if layout not in ("nhwc", "nchw"):
            raise ImageDataError(f"{path}: layout must be 'nhwc' or 'nchw', got {layout!r}")
        if layout == "nhwc":
            images = images.transpose(0, 3, 1, 2)
    else:
        raise ImageDataError(f"{path}: images must be (N, H, W) or 4-D, got shape {images.shape}")
    if images.shape[1] not in (1, 3):
        raise ImageDataError(
            f"{path}: images must have 1 or 3 channels, got {images.shape[1]} (shape {images.shape}, layout {layout}); "
            "check the layout option"
        )
    return np.ascontiguousarray(images.astype(np.uint8))


# ----- transforms ---------------------------------------------------------------------------
BatchTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
IMAGE_TRANSFORMS: Registry[BatchTransform] = Registry("image transform")


@IMAGE_TRANSFORMS.register("hflip")
def random_horizontal_flip(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip each image left-right with probability 1/2 (works for label maps too)."""
    flip = rng.random(len(raw)) < 0.5
    out = raw.copy()
    out[flip] = out[flip][..., ::-1]
    return out


# ----- the batch source for the trainer -----------------------------------------------------
@dataclass
class ImageBatchSource:
    """Shuffled training batches, epoch after epoch (docs/ARCHITECTURE.md section 5).

    Each epoch's order is a permutation drawn from ``(seed, epoch)``; process ``rank`` of
    ``world_size`` takes its own slice of every global batch, so the processes see
    disjoint images. The state is (epoch, cursor), so a resumed run replays exactly the
    batches an uninterrupted run sees. Incomplete final batches are dropped.
    """

    split: ImageSplit
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    transforms: Sequence[str] = ()
    epoch: int = field(default=0, init=False)
    cursor: int = field(default=0, init=False)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ImageDataError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ImageDataError(f"rank {self.rank} is outside world_size {self.world_size}")
        if len(self.split) < self.global_batch:
            raise ImageDataError(
                f"{self.split.dataset}/{self.split.split} has {len(self.split)} images, fewer than one global batch "
                f"({self.batch_size} x {self.world_size} processes)"
            )
        unknown = [name for name in self.transforms if name not in IMAGE_TRANSFORMS]
        if unknown:
            raise ImageDataError(f"unknown image transform(s) {unknown}; known: {', '.join(IMAGE_TRANSFORMS.names())}")
        self._transforms = [IMAGE_TRANSFORMS.get(name) for name in self.transforms]
        self._order = self._permutation(self.epoch)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return len(self.split) // self.global_batch

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.split))

    def next_batch(self) -> dict[str, Tensor]:
        if self.cursor >= self.batches_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        start = self.cursor * self.global_batch + self.rank * self.batch_size
        indices = self._order[start : start + self.batch_size]
        self.cursor += 1
        if not self._transforms:
            return self.split.tensors(indices)
        raw = self.split.pixels.take(indices)
        rng = np.random.default_rng([self.seed, self.epoch, self.cursor, self.rank, 1])
        for transform in self._transforms:
            raw = transform(raw, rng)
        batch = {"images": to_tensor(raw, self.split)}
        if self.split.labels is not None:
            batch["labels"] = torch.as_tensor(self.split.labels[indices], dtype=torch.long)
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "size": len(self.split)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("size", len(self.split)) != len(self.split) or state.get("seed", self.seed) != self.seed:
            raise ImageDataError(
                f"batch-source state was saved for {state.get('size')} images / seed {state.get('seed')}, "
                f"this source has {len(self.split)} / seed {self.seed}"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)


def iterate_batches(split: ImageSplit, batch_size: int):
    """Every image once, in order, for evaluation (the last batch may be smaller)."""
    for start in range(0, len(split), batch_size):
        yield split.tensors(np.arange(start, min(start + batch_size, len(split))))


# ----- the trainer's view: data config -> batch source --------------------------------------
class ImageSource(ImageBatchSource):
    """The batch source the trainer builds from ``cfg.data`` (``data.name: images``)."""

    def model_overrides(self) -> dict:
        """The data decides the model's input: channels and (categorical) num_categories."""
        return {"channels": self.split.channels, "num_categories": self.split.num_categories}

    def write_metadata(self, exp_dir: str | Path) -> None:
        import json

        path = Path(exp_dir) / "image_data.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "dataset": self.split.dataset,
            "split": self.split.split,
            "images": len(self.split),
            "pixels": self.split.kind,
            "channels": self.split.channels,
            "image_size": list(self.split.image_size),
            "num_values": self.split.num_values,
            "label_map": self.split.label_map,
        }
        path.write_text(json.dumps(info, indent=2) + "\n")


def _plain(node) -> dict:
    from omegaconf import OmegaConf

    if node is None:
        return {}
    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)


def load_split_from_config(cfg_data, split: str | None = None) -> ImageSplit:
    """``cfg.data`` (dataset, root, pixels, limit, options) -> one split (default: data.split)."""
    data = _plain(cfg_data)
    if not data.get("dataset"):
        raise ImageDataError(f"data.dataset is required; known image datasets: {', '.join(IMAGE_DATASETS.names())}")
    return load_image_dataset(
        str(data["dataset"]),
        split or str(data.get("split", "train")),
        root=data.get("root"),
        pixels=str(data.get("pixels", "continuous")),
        limit=data.get("limit"),
        cache=bool(data.get("cache", False)),
        **(data.get("options") or {}),
    )


@BATCH_SOURCES.register("images")
def build_image_source(cfg_data, *, rank: int = 0, world_size: int = 1, seed: int = 0) -> ImageSource:
    data = _plain(cfg_data)
    split = load_split_from_config(cfg_data)
    return ImageSource(
        split,
        batch_size=per_process_batch_size(int(data.get("batch_size", 32)), world_size),
        seed=int(seed),
        rank=rank,
        world_size=world_size,
        transforms=tuple(data.get("transforms") or ()),
    )
