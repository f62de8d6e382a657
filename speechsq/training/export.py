"""A shareable model file: weights in safetensors plus the resolved config, nothing executable.

``speechsq export-model --checkpoint exp/run/checkpoints/last.pt --out models/run`` writes::

    models/run/model.safetensors   the model's state dict (safetensors: tensors only; loading
                                   it cannot run code, unlike a pickle)
    models/run/config.yaml         the resolved config of the run (plain YAML)
    models/run/complete.json       completion marker (kind "model"), written last

:func:`speechsq.training.load_model` accepts such a directory (or its ``model.safetensors``)
as well as a checkpoint, and gives bit-identical outputs for both. The export drops what only
training needs (optimizer, RNG and batch-source states): a third of a checkpoint's size for
Adam.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from speechsq import completion
from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
KIND = "model"


class ExportedModelError(SpeechsqError, ValueError):
    """An exported model directory that is incomplete or inconsistent."""


def is_exported_model(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() or path.name == WEIGHTS


def export_model(checkpoint: str | Path, out_dir: str | Path, allow_pickle: bool = False) -> Path:
    """Write ``out_dir`` (see the module docstring) from a training checkpoint."""
    from safetensors.torch import save

    from speechsq.training.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint, map_location="cpu", allow_pickle=allow_pickle)
    if not state.get("config"):
        raise ExportedModelError(f"{checkpoint} has no config: it cannot be rebuilt as a model")
    out_dir = completion.begin(out_dir)
    # clone: safetensors refuses tensors that share memory (tied weights are saved twice)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state["model"].items()}
    data = save(tensors, metadata={"format": "speechsq-model", "step": str(int(state["step"]))})
    completion.atomic_write_bytes(out_dir / WEIGHTS, data)
    completion.atomic_write_text(out_dir / CONFIG, OmegaConf.to_yaml(OmegaConf.create(state["config"])))
    completion.mark_complete(out_dir, KIND, sorted(tensors), producer="speechsq export-model",
                             checkpoint=str(checkpoint), step=int(state["step"]),
                             weights_sha256=hashlib.sha256(data).hexdigest())
    log.info("exported %s (step %d, %d tensors) to %s", checkpoint, int(state["step"]), len(tensors), out_dir)
    return out_dir


def load_exported(path: str | Path) -> tuple[dict[str, torch.Tensor], DictConfig]:
    """``(state dict, config)`` of an exported model directory (or its model.safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(path)
    if directory.name == WEIGHTS:
        directory = directory.parent
    marker = completion.require_complete(directory, KIND, remedy="run `speechsq export-model` again")
    data = (directory / WEIGHTS).read_bytes()
    expected = marker.info.get("weights_sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ExportedModelError(f"{directory / WEIGHTS} does not match its {completion.MARKER} (changed or damaged "
                                 "after the export); export the model again")
    try:
        weights = load(data)
    except SafetensorError as err:
        raise ExportedModelError(f"{directory / WEIGHTS} cannot be read: {err}") from None
    if not marker.matches(weights):
        raise ExportedModelError(f"{directory / WEIGHTS} holds other tensors than its {completion.MARKER} lists")
    try:
        cfg = OmegaConf.load(directory / CONFIG)
    except Exception as err:  # noqa: BLE001 - yaml errors of several kinds
        raise ExportedModelError(f"{directory / CONFIG} cannot be read: {err}") from None
    return weights, cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="speechsq export-model",
        description="Write a shareable model (model.safetensors + config.yaml + complete.json) from a training "
                    "checkpoint. Loading it never unpickles anything; speechsq.training.load_model(DIR) and every "
                    "command that takes --checkpoint accept the directory.",
    )
    parser.add_argument("--checkpoint", required=True, help="training checkpoint, e.g. exp/run/checkpoints/last.pt")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="also read checkpoints that need unpickling (older speechsq versions); this can run code "
                             "stored in the file: only for files you trust")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = export_model(args.checkpoint, args.out, allow_pickle=args.trust_checkpoint)
    print(out)
    return 0
