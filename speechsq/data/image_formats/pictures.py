"""Decoding single image files with Pillow: colour mode, centre crop, resize, label maps.

Pillow comes with matplotlib (a speechsq dependency); it is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechsq.data.image_formats.errors import ImageDataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CHANNELS_OF_MODE = {"L": 1, "RGB": 3}


@dataclass(frozen=True)
class PictureSpec:
    """How to turn a file into a (C, H, W) uint8 array.

    mode: ``RGB`` or ``L`` (grey); crop: side of the centre square crop (None: no crop);
    size: side of the square output, bilinear resize (None: keep the size).
    """

    mode: str = "RGB"
    crop: int | None = None
    size: int | None = None

    def __post_init__(self):
        if self.mode not in CHANNELS_OF_MODE:
            raise ImageDataError(f"image mode must be one of {sorted(CHANNELS_OF_MODE)}, got {self.mode!r}")

    @property
    def channels(self) -> int:
        return CHANNELS_OF_MODE[self.mode]


def open_picture(path: str | Path):
    """Open and fully decode an image file; corrupt or truncated files are ImageDataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, not later
            return img.copy()
    except FileNotFoundError as err:
        raise ImageDataError(f"{path}: image file is missing") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDataError(f"{path}: cannot decode image ({err}); the file is corrupt or not an image") from err


def centre_crop_box(width: int, height: int, side: int) -> tuple[int, int, int, int]:
    if side > width or side > height:
        raise ImageDataError(f"centre crop {side}x{side} is larger than the {width}x{height} image")
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def read_picture(path: str | Path, spec: PictureSpec) -> np.ndarray:
    """-> uint8 (C, H, W): convert to ``spec.mode``, centre crop, bilinear resize."""
    from PIL import Image

    img = open_picture(path).convert(spec.mode)
    if spec.crop is not None:
        img = img.crop(centre_crop_box(*img.size, spec.crop))
    if spec.size is not None and img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), Image.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def read_label_map(path: str | Path, num_categories: int, size: int | None = None) -> np.ndarray:
    """A single-channel PNG of category ids -> uint8 (H, W); nearest-neighbour resize
    (interpolating ids would invent categories). Colour-coded (RGB) maps and ids
    outside [0, num_categories) are errors."""
    from PIL import Image

    img = open_picture(path)
    if img.mode not in ("L", "P", "I", "I;16", "1"):
        raise ImageDataError(
            f"{path}: a label map must be a single-channel image of category ids, got mode {img.mode!r} "
            f"({len(img.getbands())} channels); colour-coded masks must first be converted to ids"
        )
    if img.mode == "1":
        img = img.convert("L")
    # check at full resolution: a stray id could fall between the samples of the resize
    check_category_ids(np.asarray(img), num_categories, str(path))
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.NEAREST)
    return np.asarray(img).astype(np.uint8)


def check_category_ids(ids: np.ndarray, num_categories: int, where: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= num_categories):
        bad = sorted(set(np.unique(ids[(ids < 0) | (ids >= num_categories)]).tolist()))[:5]
        raise ImageDataError(f"{where}: category ids {bad} are outside [0, {num_categories})")


def list_pictures(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive), sorted by path."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
