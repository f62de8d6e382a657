"""TensorBoard beyond scalars: media a model logs at checkpoints, and hparams at the end.

The model hook (docs/ARCHITECTURE.md section 6). A model may define::

    def summaries(self, batch: dict[str, Tensor]) -> dict[str, dict]:
        return {
            "images":  {name: array},          # (H, W), (C, H, W) or (H, W, C); C in 1, 3, 4;
                                               #   floats in [0, 1] or uint8; (array, "HWC") to
                                               #   give the layout of an ambiguous shape
            "audio":   {name: (wave, rate)},   # wave (T,) float in [-1, 1], rate in Hz
            "figures": {name: matplotlib.figure.Figure},
            "scalars": {name: float},
        }

The trainer calls it at every checkpoint on the main process only, with the model in eval
mode, under ``torch.no_grad()`` and with forked random streams (so it changes nothing of the
training), on a fixed batch: the first held-out batch when there is a validation set, else
the latest training batch. It must not use collective operations. Tags are written as
``<kind>/<name>``. A failing hook is logged, never fatal: logging must not stop a run.

:func:`write_hparams`: the flattened resolved config's scalar values (int, float, bool, str)
as TensorBoard hparams, with the final metrics, at the end of ``fit()``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)

MEDIA_KINDS = ("images", "audio", "figures", "scalars")


def _array(value: Any) -> np.ndarray:
    if torch.is_tensor(value):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def image_dataformats(image: np.ndarray) -> str:
    """``HW``, ``CHW`` or ``HWC`` from the shape (channels: 1, 3 or 4); CHW (torch's layout)
    when both ends could be channels, e.g. (3, 8, 4): pass ``(array, "HWC")`` to say otherwise."""
    channels = (1, 3, 4)
    if image.ndim == 2:
        return "HW"
    if image.ndim == 3:
        if image.shape[-1] in channels and image.shape[0] not in channels:
            return "HWC"
        if image.shape[0] in channels:
            return "CHW"
    raise ValueError(f"an image must be (H, W), (C, H, W) or (H, W, C) with C in 1, 3, 4; got shape {image.shape}")


def write_media(writer, media: Mapping[str, Mapping[str, Any]], step: int) -> list[str]:
    """Write what a model's ``summaries`` returned; returns the tags written."""
    tags = []
    for kind, items in media.items():
        if kind not in MEDIA_KINDS:
            log.warning("summaries: unknown kind %r ignored (known: %s)", kind, ", ".join(MEDIA_KINDS))
            continue
        for name, value in items.items():
            tag = f"{kind}/{name}"
            if kind == "images":
                image, layout = (_array(value[0]), value[1]) if isinstance(value, tuple) else (_array(value), None)
                writer.add_image(tag, image, step, dataformats=layout or image_dataformats(image))
            elif kind == "audio":
                wave, rate = value
                wave = _array(wave).reshape(-1)
                writer.add_audio(tag, torch.from_numpy(np.clip(wave, -1.0, 1.0).astype(np.float32)), step,
                                 sample_rate=int(rate))
            elif kind == "figures":
                writer.add_figure(tag, value, step, close=True)
            else:
                writer.add_scalar(tag, float(value), step)
            tags.append(tag)
    writer.flush()
    return tags


def scalar_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config's int/float/bool/str values (lists, nulls and empty groups left out)."""
    from speechsq.training.rundir import flatten

    return {k: v for k, v in flatten(config).items() if isinstance(v, (bool, int, float, str))}


def write_hparams(writer, config: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
    """hparams (plugin ``hparams``) of this run with ``metrics`` as scalars ``hparams/<name>``."""
    from torch.utils.tensorboard.summary import hparams

    metric_dict = {f"hparams/{k}": float(v) for k, v in metrics.items()}
    experiment, session_start, session_end = hparams(scalar_hparams(config), metric_dict)
    file_writer = writer._get_file_writer()
    for summary in (experiment, session_start, session_end):
        file_writer.add_summary(summary, step)
    for tag, value in metric_dict.items():
        writer.add_scalar(tag, value, step)
    writer.flush()
