"""CelebA (aligned and cropped) and CelebAMask-HQ directory layouts.

CelebA: ``img_align_celeba/`` (also the Kaggle ``img_align_celeba/img_align_celeba/``)
with the official split file ``list_eval_partition.txt`` (``000001.jpg 0``; 0 train,
1 valid, 2 test) or Kaggle's ``list_eval_partition.csv`` (``image_id,partition``),
in ``root`` or ``root/Eval``.

CelebAMask-HQ: either combined label maps (``CelebAMask-HQ-mask/<i>.png``, ids 0..18,
as written by the dataset's ``g_mask.py``) or the raw part masks
``CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png`` which are combined here in the
official order (later parts overwrite earlier ones; 0 is background).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speechsq.data.image_formats.errors import ImageDataError
from speechsq.data.image_formats.pictures import check_category_ids, open_picture

PARTITION_IDS = {"train": 0, "valid": 1, "test": 2}

# The order of g_mask.py in the CelebAMask-HQ repository: part i gets id i + 1.
CELEBA_MASK_PARTS = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
CELEBA_MASK_CATEGORIES = len(CELEBA_MASK_PARTS) + 1  # 19 with the background
CELEBA_MASK_FILES_PER_FOLDER = 2000


def celeba_image_dir(root: Path) -> Path:
    for candidate in (root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba"):
        if candidate.is_dir() and (any(candidate.glob("*.jpg")) or any(candidate.glob("*.png"))):
            return candidate
    raise ImageDataError(f"{root}: not a CelebA directory (no img_align_celeba/ folder of images)")


def find_partition_file(root: Path) -> Path:
    for sub in ("", "Eval", "list_eval_partition"):
        for name in ("list_eval_partition.txt", "list_eval_partition.csv"):
            if (root / sub / name).is_file():
                return root / sub / name
    raise ImageDataError(f"{root}: the official split file list_eval_partition.txt (or .csv) is missing")


def read_partition(path: Path) -> dict[str, int]:
    """file name -> partition id (0 train, 1 valid, 2 test)."""
    partition: dict[str, int] = {}
    lines = path.read_text().splitlines()
    if lines and lines[0].replace(" ", "").lower().startswith("image_id,"):
        lines = lines[1:]  # Kaggle csv header
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.replace(",", " ").split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ImageDataError(f"{path}:{number}: expected '<image> <0|1|2>', got {line!r}")
        partition[fields[0]] = int(fields[1])
    if not partition:
        raise ImageDataError(f"{path}: the split file is empty")
    return partition


def celeba_split_files(root: str | Path, split: str) -> list[Path]:
    """Image paths of one official split, in split-file order."""
    root = Path(root)
    if not root.is_dir():
        raise ImageDataError(f"{root}: CelebA directory does not exist")
    images = celeba_image_dir(root)
    partition = read_partition(find_partition_file(root))
    wanted = PARTITION_IDS[split]
    names = [name for name, part in partition.items() if part == wanted]
    missing = [n for n in names if not (images / n).is_file()]
    if missing:
        raise ImageDataError(
            f"{images}: {len(missing)} images of the {split} split listed in the split file are missing "
            f"(first: {missing[0]})"
        )
    return [images / n for n in names]


# ----- CelebAMask-HQ ----------------------------------------------------------------------
def celeba_mask_sources(root: str | Path) -> tuple[str, list]:
    """('combined', [png paths by index]) or ('parts', [image index...])."""
    root = Path(root)
    for base in (root, root / "CelebAMask-HQ"):
        combined = base / "CelebAMask-HQ-mask"
        if combined.is_dir():
            files = {int(p.stem): p for p in combined.glob("*.png") if p.stem.isdigit()}
            if files:
                return "combined", [files[i] for i in sorted(files)]
        anno = base / "CelebAMask-HQ-mask-anno"
        if anno.is_dir():
            indices = sorted({int(p.name[:5]) for p in anno.glob("*/*.png") if p.name[:5].isdigit()})
            if indices:
                return "parts:" + str(anno), indices
    raise ImageDataError(
        f"{root}: not a CelebAMask-HQ directory (expected CelebAMask-HQ-mask/<i>.png label maps or "
        "CelebAMask-HQ-mask-anno/<folder>/<i:05d>_<part>.png part masks)"
    )


#: speechsq split -> folder prefix of the CelebAMask-HQ partition into train_/val_/test_label/
#: (the dataset's partition script; read so by sony/sqvae vision/util.py get_loader_celeba_mask_hq)
MASK_PARTITION_FOLDERS = {"train": "train", "valid": "val", "test": "test"}


def celeba_mask_partition_files(root: str | Path, split: str) -> list[Path]:
    """Label maps ``<split>_label/<i>.png`` of one partition folder, in index order."""
    root = Path(root)
    name = f"{MASK_PARTITION_FOLDERS[split]}_label"
    for base in (root, root / "CelebAMask-HQ"):
        folder = base / name
        if folder.is_dir():
            files = {int(p.stem): p for p in folder.glob("*.png") if p.stem.isdigit()}
            if not files:
                raise ImageDataError(f"{folder}: no <i>.png label maps")
            return [files[i] for i in sorted(files)]
    raise ImageDataError(
        f"{root}: no {name}/ folder (data.options.partition=folders reads the dataset's own "
        "train_label/, val_label/ and test_label/ folders; partition=seeded splits CelebAMask-HQ-mask/ by index)"
    )


def combine_part_masks(anno_dir: str | Path, index: int) -> np.ndarray:
    """The official combination of one face's part masks into an id map (H, W) uint8."""
    anno_dir = Path(anno_dir)
    folder = anno_dir / str(index // CELEBA_MASK_FILES_PER_FOLDER)
    combined = None
    for part_id, part in enumerate(CELEBA_MASK_PARTS, 1):
        path = folder / f"{index:05d}_{part}.png"
        if not path.is_file():
            continue  # a face without this part (no hat, no earring ...)
        img = open_picture(path).convert("L")
        mask = np.asarray(img) != 0
        if combined is None:
            combined = np.zeros(mask.shape, dtype=np.uint8)
        elif mask.shape != combined.shape:
            raise ImageDataError(f"{path}: part mask is {mask.shape[::-1]} but the face's other parts are {combined.shape[::-1]}")
        combined[mask] = part_id
    if combined is None:
        raise ImageDataError(f"{folder}: no part mask found for face {index:05d}")
    check_category_ids(combined, CELEBA_MASK_CATEGORIES, str(folder))
    return combined
