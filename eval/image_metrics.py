"""Image metrics of the papers, for a trained image model on one split.

* ``mse_x1e3``: mean squared error per pixel value in [0, 1], times 10^3 (SQ-VAE Table 2 and
  Figure 5; Table 5 on 256 grey-level categories: the decoded level / 255 against the true
  level / 255).
* ``perplexity``: exp of the entropy of the hard-code histogram over the whole split
  (for grouped quantizers such as ``depthwise``: the mean over groups), and the number of
  codes used.
* ``pixel_error`` (%) and ``miou`` (%) for categorical data (SQ-VAE Table 4): mIoU is the
  class-wise intersection over union accumulated over the whole split (Cordts et al.
  2016), averaged over the classes that occur in the split's targets or predictions.
* probes of the continuous latents z_e (soft VQ-VAE Tables 1-2): k-means accuracy with
  Hungarian matching, NMI and a linear classifier, from :mod:`speechsq.eval.probes`.

    python -m speechsq.eval.image_metrics --checkpoint exp/images_digits_vq/checkpoints/last.pt --split test
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


# ----- the metrics themselves ----------------------------------------------------------------
def mse_x1e3(reconstruction: Tensor, target: Tensor) -> float:
    """Mean squared error over every pixel value of the batch, times 1000."""
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ in shape")
    return float((reconstruction.double() - target.double()).pow(2).mean()) * 1e3


def code_counts(indices: Tensor, num_codes: int) -> Tensor:
    """(num_groups, K) histogram of hard codes; ``-1`` (masked) entries are ignored.

    Indices are (B, h, w) for one codebook or (B, h, w, G) for G grouped codebooks."""
    idx = indices.detach().long().cpu()
    groups = idx.reshape(-1, 1) if idx.ndim <= 3 else idx.reshape(-1, idx.shape[-1])
    counts = torch.zeros(groups.shape[1], num_codes, dtype=torch.float64)
    for g in range(groups.shape[1]):
        col = groups[:, g]
        col = col[col >= 0]
        if col.numel() and int(col.max()) >= num_codes:
            raise ValueError(f"code index {int(col.max())} is outside the codebook of {num_codes}")
        counts[g] = torch.bincount(col, minlength=num_codes).double()
    return counts


def perplexity_from_counts(counts: Tensor) -> float:
    """exp(H(p)) of a code histogram (K,), or the mean over the rows of a (G, K) histogram."""
    counts = counts.double().reshape(-1, counts.shape[-1])
    values = []
    for row in counts:
        total = row.sum()
        if total <= 0:
            raise ValueError("no codes to compute a perplexity from")
        p = row[row > 0] / total
        values.append(math.exp(float(-(p * p.log()).sum())))
    return float(np.mean(values))


def confusion_matrix(prediction: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(num_classes, num_classes) counts, rows = true class, columns = predicted class."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    t, p = target.reshape(-1).long().cpu(), prediction.reshape(-1).long().cpu()
    for name, x in (("target", t), ("prediction", p)):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
            raise ValueError(f"{name} classes must lie in [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes).double()


def pixel_error_percent(confusion: Tensor) -> float:
    """Share of wrongly decoded pixels, in percent."""
    total = float(confusion.sum())
    if total == 0:
        raise ValueError("empty confusion matrix")
    return 100.0 * (1.0 - float(confusion.diagonal().sum()) / total)


def mean_iou_percent(confusion: Tensor) -> float:
    """Mean over classes of TP / (TP + FP + FN), in percent; classes absent from both the
    targets and the predictions (union 0) are left out."""
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    if not bool(present.any()):
        raise ValueError("empty confusion matrix")
    return 100.0 * float((tp[present] / union[present]).mean())


# ----- a whole split through a model --------------------------------------------------------
@dataclass
class ImageEvalResult:
    dataset: str
    split: str
    images: int
    pixels: str
    nll: float  # per image, as in training
    perplexity: float
    active_codes: int
    mse_x1e3: float | None = None  # continuous pixels, or grey-level categories
    pixel_error: float | None = None  # %, categorical
    miou: float | None = None  # %, label maps
    probes: dict | None = None

    def as_row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@torch.no_grad()
def evaluate_image_model(model, split, batch_size: int = 256, device: str | torch.device = "cpu") -> ImageEvalResult:
    """Deterministic (eval-mode) reconstruction of every image of ``split``."""
    from speechsq.data.images import iterate_batches
    from speechsq.quantizers import StepContext

    model = model.to(device)
    was_training = model.training
    model.eval()
    num_codes = model.quantizer.num_codes
    categorical = split.kind == "categorical"
    if categorical != (getattr(model, "num_categories", None) is not None):
        raise ValueError(f"the model was trained on {'categorical' if not categorical else 'continuous'} pixels, the split is {split.kind}")
    counts = None
    sse, values, nll_sum, n = 0.0, 0, 0.0, 0
    confusion = torch.zeros(split.num_values, split.num_values, dtype=torch.float64) if categorical else None
    try:
        for batch in iterate_batches(split, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch, StepContext())
            b = batch["images"].shape[0]
            nll_sum += float(out.metrics["nll"]) * b
            n += b
            c = code_counts(out.outputs["indices"], num_codes)
            counts = c if counts is None else counts + c
            recon, target = out.outputs["reconstruction"], batch["images"]
            if categorical:
                confusion += confusion_matrix(recon, target, split.num_values)
                if not split.label_map:  # grey levels: MSE of level / (levels - 1)
                    scale = float(split.num_values - 1)
                    sse += float((recon.double() / scale - target.double() / scale).pow(2).sum())
                    values += target.numel()
            else:
                sse += float((recon.double() - target.double()).pow(2).sum())
                values += target.numel()
    finally:
        model.train(was_training)
    result = ImageEvalResult(
        dataset=split.dataset,
        split=split.split,
        images=n,
        pixels=split.kind,
        nll=nll_sum / n,
        perplexity=perplexity_from_counts(counts),
        active_codes=int((counts > 0).sum()),
    )
    if values:
        result.mse_x1e3 = sse / values * 1e3
    if confusion is not None:
        result.pixel_error = pixel_error_percent(confusion)
        if split.label_map:
            result.miou = mean_iou_percent(confusion)
    return result


@torch.no_grad()
def latent_features(model, split, batch_size: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """The continuous encoder outputs z_e of every image, flattened: (N, D_in * h * w)."""
    from speechsq.data.images import iterate_batches

    model = model.to(device)
    feats = [model.encode(batch["images"].to(device))["z_e"].flatten(1).cpu().numpy() for batch in iterate_batches(split, batch_size)]
    return np.concatenate(feats).astype(np.float32)


def probe_latents(model, train_split, test_split, batch_size: int = 256, device="cpu", seed: int = 0, n_init: int = 100) -> dict:
    """Soft VQ-VAE Tables 1-2 on z_e: k-means accuracy (best of ``n_init`` random starts,
    Hungarian matching) and NMI on the test latents, and a linear classifier trained on the
    training latents and scored on the test latents (:mod:`speechsq.eval.probes`)."""
    from speechsq.eval import probes

    for s in (train_split, test_split):
        if s.labels is None:
            raise ValueError(f"{s.dataset}/{s.split} has no class labels to probe with")
    train_x = latent_features(model, train_split, batch_size, device)
    test_x = latent_features(model, test_split, batch_size, device)
    clustering = probes.kmeans_probe(test_x, test_split.labels, n_init=n_init, seed=seed)
    return {
        "clustering_accuracy": clustering.accuracy,
        "clustering_nmi": clustering.nmi,
        "classification_accuracy": probes.linear_probe(train_x, train_split.labels, test_x, test_split.labels, seed=seed),
    }


# ----- command line -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m speechsq.eval.image_metrics",
        description="Evaluate a trained image model (speechsq train experiment=images_*) on one split: "
        "MSE x1e3, perplexity, pixel error and mIoU (categorical), optional latent probes.",
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of an image model (exp/<tag>/checkpoints/last.pt)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--data-root", default=None, help="override data.root of the training config")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--probes", action="store_true", help="also run the latent probes (needs class labels)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from omegaconf import open_dict

    from speechsq.data.image_formats import ImageDataError
    from speechsq.data.images import load_split_from_config
    from speechsq.training import load_model

    try:
        model, cfg = load_model(args.checkpoint, device=args.device)
        with open_dict(cfg):
            if args.data_root is not None:
                cfg.data.root = args.data_root
            cfg.data.limit = args.limit
        split = load_split_from_config(cfg.data, args.split)
        result = evaluate_image_model(model, split, args.batch_size, args.device)
        if args.probes:
            result.probes = probe_latents(model, load_split_from_config(cfg.data, "train"), split, args.batch_size, args.device)
    except (FileNotFoundError, ImageDataError, ValueError) as err:
        print(f"image_metrics: error: {err}", file=sys.stderr)
        return 2
    row = result.as_row()
    text = json.dumps(row, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
