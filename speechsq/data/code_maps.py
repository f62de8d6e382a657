"""Code maps of a trained image model: written once, read by the prior's batch source.

A PixelCNN prior (``speechsq.models.pixelcnn``, SQ-VAE Sec. 5.1) is trained on the
discrete latents of a trained image model. :func:`extract_code_maps` encodes one split
with the model (eval mode, deterministic hard codes) and writes a directory::

    codes.npy      (N, H, W) code indices: int16 when K <= 32767, else int64
    labels.npy     (N,) int64 class labels, when the dataset has them
    complete.json  kind "code_maps", written last (speechsq.completion): num_codes,
                   height, width, the image checkpoint, dataset and split

    speechsq extract-codes --checkpoint exp/images_digits/vq/checkpoints/last.pt \\
        --split train --out exp/images_digits/vq/codes/train

The batch source ``code_maps`` (``data=code_maps data.codes_dir=...``) reads such a
directory and gives the trainer ``{"codes": (B, H, W) int64[, "labels": (B,)]}``, epoch
after epoch in a seeded order that a resumed run replays exactly (the image source's
sampler); it sets ``model.num_codes``, ``model.height`` and ``model.width`` from the maps.
Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechsq import completion
from speechsq.data import BATCH_SOURCES, per_process_batch_size
from speechsq.data.images import ImageBatchSource
from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

KIND = "code_maps"
PRODUCER = "speechsq extract-codes"
INT16_MAX_CODES = np.iinfo(np.int16).max


class CodeMapDataError(SpeechsqError, ValueError):
    """A code-map directory or model that cannot give code maps (grouped codes, bad arrays)."""


@dataclass
class CodeMaps:
    """One split's code maps; the ``split`` protocol of :class:`ImageBatchSource`."""

    dataset: str
    split: str
    codes: np.ndarray  # (N, H, W) integers in [0, num_codes)
    labels: np.ndarray | None
    num_codes: int

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.codes.shape[1]), int(self.codes.shape[2])

    def tensors(self, indices: np.ndarray) -> dict[str, Tensor]:
        indices = np.asarray(indices)
        batch = {"codes": torch.from_numpy(np.ascontiguousarray(self.codes[indices])).long()}
        if self.labels is not None:
            batch["labels"] = torch.as_tensor(self.labels[indices], dtype=torch.long)
        return batch


def code_dtype(num_codes: int) -> np.dtype:
    return np.dtype(np.int16) if int(num_codes) <= INT16_MAX_CODES else np.dtype(np.int64)


def image_keys(n: int) -> list[str]:
    return [f"{i:07d}" for i in range(n)]


def write_code_maps(out_dir: str | Path, maps: CodeMaps, **info) -> Path:
    """Write ``maps`` with the completion protocol (marker last)."""
    codes = np.asarray(maps.codes)
    _check_codes(codes, maps.num_codes, str(out_dir))
    out = completion.begin(out_dir)
    np.save(out / "codes.npy", codes.astype(code_dtype(maps.num_codes)), allow_pickle=False)
    if maps.labels is not None:
        np.save(out / "labels.npy", np.asarray(maps.labels, dtype=np.int64), allow_pickle=False)
    else:
        (out / "labels.npy").unlink(missing_ok=True)
    h, w = maps.shape
    completion.mark_complete(
        out, KIND, image_keys(len(codes)), producer=PRODUCER,
        num_codes=int(maps.num_codes), height=h, width=w, dataset=maps.dataset, split=maps.split, **info,
    )  # fmt: skip
    return out


def _check_codes(codes: np.ndarray, num_codes: int, where: str) -> None:
    if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
        raise CodeMapDataError(f"{where}: code maps must be an (N, H, W) integer array, got {codes.dtype} {codes.shape}")
    if len(codes) == 0:
        raise CodeMapDataError(f"{where}: no code maps")
    if codes.min() < 0 or codes.max() >= num_codes:
        raise CodeMapDataError(f"{where}: code indices must lie in [0, {num_codes}), found [{codes.min()}, {codes.max()}]")


def read_code_maps(directory: str | Path) -> CodeMaps:
    """The code maps of a complete directory (clear errors for unfinished or bad ones)."""
    directory = Path(directory)
    marker = completion.require_complete(directory, KIND, remedy=f"write it with `{PRODUCER} --checkpoint ... --out {directory}`")
    info = marker.info
    try:
        codes = np.load(directory / "codes.npy", allow_pickle=False)
        labels = np.load(directory / "labels.npy", allow_pickle=False) if (directory / "labels.npy").is_file() else None
    except (OSError, ValueError) as err:
        raise CodeMapDataError(f"{directory}: cannot read the code maps ({err}); write them again") from None
    num_codes = int(info["num_codes"])
    _check_codes(codes, num_codes, str(directory / "codes.npy"))
    if len(codes) != marker.count or tuple(codes.shape[1:]) != (int(info["height"]), int(info["width"])):
        raise CodeMapDataError(
            f"{directory / 'codes.npy'} holds {codes.shape} but complete.json records {marker.count} maps of "
            f"{info['height']}x{info['width']}: the directory was changed after it was written; write it again"
        )
    if labels is not None and labels.shape != (len(codes),):
        raise CodeMapDataError(f"{directory / 'labels.npy'}: {labels.shape} labels for {len(codes)} code maps")
    return CodeMaps(str(info.get("dataset", directory.name)), str(info.get("split", "?")), codes, labels, num_codes)


# ----- extraction ---------------------------------------------------------------------------
@torch.no_grad()
def encode_split(model, split, batch_size: int = 256, device: str | torch.device = "cpu") -> CodeMaps:
    """Hard codes of every image of ``split`` (an :class:`~speechsq.data.images.ImageSplit`)."""
    from speechsq.data.images import iterate_batches

    quantizer = model.quantizer
    if quantizer.num_groups != 1:
        raise CodeMapDataError(
            f"the model's quantizer has {quantizer.num_groups} codebooks per position ({type(quantizer).__name__}); "
            "a code-map prior models one code per position"
        )
    model = model.to(device).eval()
    chunks = [model.encode(batch["images"].to(device))["indices"].cpu().numpy() for batch in iterate_batches(split, batch_size)]
    codes = np.concatenate(chunks)
    return CodeMaps(split.dataset, split.split, codes, split.labels, int(quantizer.num_codes))


def extract_code_maps(
    checkpoint: str | Path,
    split: str,
    out_dir: str | Path,
    data_root: str | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> CodeMaps:
    """Encode ``split`` with the image model of ``checkpoint`` and write the code maps."""
    from omegaconf import open_dict

    from speechsq.data.images import load_split_from_config
    from speechsq.training import load_model

    model, cfg = load_model(checkpoint, device=device)
    if not hasattr(model, "encode") or not hasattr(model, "decode_indices"):
        raise CodeMapDataError(f"{checkpoint} is a {type(model).__name__}, not an image model (model.name=image_vqvae)")
    with open_dict(cfg):
        if data_root is not None:
            cfg.data.root = data_root
        cfg.data.limit = limit
    images = load_split_from_config(cfg.data, split)
    maps = encode_split(model, images, batch_size, device)
    write_code_maps(
        out_dir, maps, checkpoint=str(Path(checkpoint).resolve()), quantizer=str(cfg.quantizer.name),
        dtype=str(code_dtype(maps.num_codes)),
    )  # fmt: skip
    log.info("%d code maps of %dx%d (K=%d) from %s/%s -> %s", len(maps), *maps.shape, maps.num_codes, maps.dataset, split, out_dir)
    return maps


# ----- the trainer's view -------------------------------------------------------------------
class CodeMapSource(ImageBatchSource):
    """Shuffled batches of code maps (the image source's seeded, resumable sampler)."""

    def model_overrides(self) -> dict:
        h, w = self.split.shape
        return {"num_codes": self.split.num_codes, "height": h, "width": w}

    def write_metadata(self, exp_dir: str | Path) -> None:
        h, w = self.split.shape
        info = {"dataset": self.split.dataset, "split": self.split.split, "code_maps": len(self.split), "height": h, "width": w,
                "num_codes": self.split.num_codes, "labels": self.split.labels is not None}  # fmt: skip
        completion.atomic_write_text(Path(exp_dir) / "code_maps.json", json.dumps(info, indent=2) + "\n")


@BATCH_SOURCES.register("code_maps")
def build_code_map_source(cfg_data, *, rank: int = 0, world_size: int = 1, seed: int = 0) -> CodeMapSource:
    """``cfg.data``: codes_dir (a directory written by :func:`extract_code_maps`), batch_size."""
    codes_dir = cfg_data.get("codes_dir")
    if not codes_dir:
        raise CodeMapDataError("data.codes_dir is not set: the code maps to train the prior on (speechsq extract-codes)")
    maps = read_code_maps(codes_dir)
    return CodeMapSource(maps, batch_size=per_process_batch_size(int(cfg_data.get("batch_size", 32)), world_size),
                         seed=int(seed), rank=rank, world_size=world_size)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="speechsq extract-codes",
        description="Encode one split with a trained image model and write its code maps (for the PixelCNN prior).",
    )
    parser.add_argument("--checkpoint", required=True, help="an image model checkpoint (exp/<tag>/checkpoints/last.pt)")
    parser.add_argument("--split", default="train", choices=("train", "valid", "test"))
    parser.add_argument("--out", required=True, help="output directory (codes.npy, labels.npy, complete.json)")
    parser.add_argument("--data-root", default=None, help="override data.root of the image model's config")
    parser.add_argument("--limit", type=int, default=None, help="encode only the first N images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from speechsq.threads import configure_threads

    configure_threads()
    extract_code_maps(args.checkpoint, args.split, args.out, args.data_root, args.limit, args.batch_size, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
