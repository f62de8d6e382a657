"""One row of SQ-VAE Table 2 for a trained image model (and its PixelCNN prior).

Columns, each a Fréchet distance to the images of the evaluation split (``--split``,
the test set as in the paper's caption):

* ``mse_x1e3``     reconstruction MSE x 10^3 (as :mod:`speechsq.eval.image_metrics`);
* ``rfid``         of the deterministic reconstructions of the split;
* ``generation``   of images decoded from code maps sampled from the prior (``--prior``; as
                   many as the split has images, unless ``--samples``);
* ``neighbor_k``   of the reconstructions after Neighbor-k (k = 3, 5, 10) on their codes;
* ``interp``       of the images decoded from interpolated, re-projected latents
                   (:mod:`speechsq.eval.latent_manipulation`);

plus the prior's test negative log-likelihood (the paper trains its PixelCNNs "such that
they have the same test log-likelihood": compare this column across models). The feature
space is the standard FID's Inception-v3 with ``--inception-weights FILE``, else the offline
classifier FD (:mod:`speechsq.eval.fid`), and the output says which.

    speechsq image-fid --checkpoint exp/images_digits/vq/checkpoints/last.pt \\
        --prior exp/images_digits/vq/prior/checkpoints/last.pt \\
        --classifier-dir exp/images_digits/fd_classifier --out exp/images_digits/vq/fid_test.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechsq.errors import MismatchError
from speechsq.eval import latent_manipulation as LM
from speechsq.eval.fid import FeatureSpace, build_feature_space, feature_stats, frechet_distance, images_as_float

log = logging.getLogger(__name__)

NEIGHBOR_KS = (3, 5, 10)


@dataclass
class Table2Row:
    """One model's numbers; FD values are in ``feature_space`` (see its ``label``)."""

    dataset: str
    split: str
    images: int
    feature_space: dict
    mse_x1e3: float | None
    rfid: float
    neighbor: dict[str, float] = field(default_factory=dict)
    interp: float | None = None
    generation: float | None = None
    generated: int | None = None
    prior_test_nll_nats: float | None = None  # per code map
    prior_test_bits_per_code: float | None = None
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Evaluation:
    """One pass over the evaluation split: its codes, the reference statistics, the
    reconstructions' statistics and squared error; then the Fréchet distance of any stream
    of image batches to the reference. Images are never all held in memory at once."""

    def __init__(self, model, split, space: FeatureSpace, batch_size: int = 256, device: str = "cpu", keep: int = 8):
        from speechsq.data.images import iterate_batches

        self.model = model.to(device).eval()
        self.split, self.space, self.batch_size, self.device = split, space, batch_size, device
        self.keep = keep
        self.examples: dict[str, Tensor] = {}  # the first images of every column, for the figure
        codes, reference, reconstructed = [], [], []
        sse, values = 0.0, 0
        for batch in iterate_batches(split, batch_size):
            images = batch["images"]
            idx = model.encode(images.to(device))["indices"]
            recon = model.decode_indices(idx).cpu()
            codes.append(idx.cpu())
            self._remember("test images", images)
            self._remember("reconstruction", recon)
            reference.append(self.features(images))
            reconstructed.append(self.features(recon))
            err = squared_error(recon, images, split)
            if err is not None:
                sse, values = sse + err, values + images.numel()
        self.codes = torch.cat(codes)
        self.reference = feature_stats(np.concatenate(reference))
        self.rfid = frechet_distance(self.reference, feature_stats(np.concatenate(reconstructed)))
        self.mse_x1e3 = sse / values * 1e3 if values else None

    def features(self, images: Tensor) -> np.ndarray:
        return self.space.features(images_as_float(images, self.split.kind, self.split.num_values, self.split.label_map))

    def _remember(self, name: str, images: Tensor) -> None:
        if name not in self.examples:
            self.examples[name] = images[: self.keep]

    def fd(self, batches, name: str) -> float:
        """Fréchet distance of a stream of image batches to the split's images; its first
        images are kept under ``name``."""
        feats = []
        for batch in batches:
            self._remember(name, batch)
            feats.append(self.features(batch))
        return frechet_distance(self.reference, feature_stats(np.concatenate(feats)))

    def decoded(self, codes: Tensor):
        for i in range(0, codes.shape[0], self.batch_size):
            yield self.model.decode_indices(codes[i : i + self.batch_size].to(self.device)).cpu()


def squared_error(recon: Tensor, target: Tensor, split) -> float | None:
    """Summed squared error as image_metrics scores it: pixel values in [0, 1], grey-level
    ids as level / (levels - 1); None for label maps (no MSE)."""
    if split.label_map:
        return None
    recon, target = recon.double(), target.double()
    if split.kind == "categorical":
        scale = float(split.num_values - 1)
        recon, target = recon / scale, target / scale
    return float((recon - target).pow(2).sum())


@torch.no_grad()
def evaluate_table2(
    model,
    split,
    space: FeatureSpace,
    prior=None,
    neighbor_ks: tuple[int, ...] = NEIGHBOR_KS,
    samples: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    figure: str | Path | None = None,
) -> Table2Row:
    """Every column of Table 2 for ``model`` (and ``prior``, if given) on ``split``;
    ``figure``: also draw the first images of every column there (PNG)."""
    ev = Evaluation(model, split, space, batch_size, device)
    row = Table2Row(dataset=split.dataset, split=split.split, images=len(split), feature_space=space.describe(),
                    mse_x1e3=ev.mse_x1e3, rfid=ev.rfid, seed=seed)  # fmt: skip
    log.info("rFD %.4g, MSE x1e3 %s", row.rfid, row.mse_x1e3)

    vectors = LM.code_vectors(model.quantizer)
    for k in neighbor_ks:
        row.neighbor[str(k)] = ev.fd(ev.decoded(LM.neighbor_k(ev.codes, LM.neighbor_table(vectors, k))), f"Neighbor-{k}")
        log.info("Neighbor-%d FD %.4g", k, row.neighbor[str(k)])

    row.interp = ev.fd(interpolated_images(ev, seed), "interpolation")
    log.info("Interp. FD %.4g", row.interp)

    if prior is not None:
        check_prior_fits(prior, model, ev.codes)
        prior = prior.to(device).eval()
        labels = None if prior.num_classes is None else torch.as_tensor(split.labels, dtype=torch.long)
        nll = torch.cat([
            -prior.log_prob(ev.codes[i : i + batch_size].to(device), None if labels is None else labels[i : i + batch_size].to(device)).cpu()
            for i in range(0, len(split), batch_size)
        ])  # fmt: skip
        row.prior_test_nll_nats = float(nll.double().mean())
        row.prior_test_bits_per_code = row.prior_test_nll_nats / (ev.codes[0].numel() * math.log(2.0))
        n = int(samples or len(split))
        sampled = sample_codes(prior, n, tuple(ev.codes.shape[1:]), seed, batch_size, device)
        row.generation, row.generated = ev.fd(ev.decoded(sampled), "generated"), n
        log.info("generation FD %.4g (%d samples), prior test NLL %.4g bits/code", row.generation, n, row.prior_test_bits_per_code)
    if figure is not None:
        example_figure(ev.examples, split, figure)
    return row


def example_figure(examples: dict[str, Tensor], split, path: str | Path) -> Path:
    """One row of images per column of the table (SQ-VAE Figures 6-7 for one model)."""
    from speechsq.eval.plots import _pyplot, save_figure

    plt = _pyplot()
    cols = max(len(v) for v in examples.values())
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.1 * cols + 1.4, 1.15 * len(examples)), squeeze=False)
    for r, (name, images) in enumerate(examples.items()):
        pictures = images_as_float(images, split.kind, split.num_values, split.label_map)
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(pictures):
                ax.axis("off")
                continue
            picture = pictures[c]
            if split.label_map:  # categories: a colour per class
                ax.imshow(picture.argmax(0).numpy(), cmap="tab20", vmin=0, vmax=max(split.num_values - 1, 1))
            elif picture.shape[0] == 1:
                ax.imshow(picture[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
            if c == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    return save_figure(fig, path)


def interpolated_images(ev: Evaluation, seed: int):
    """Decoded interpolations of every image with its partner (latent_manipulation)."""
    n = len(ev.split)
    first, second = LM.interpolation_pairs(n, seed)
    ratios = torch.from_numpy(LM.mixing_ratios(n, seed))
    for i in range(0, n, ev.batch_size):
        part = slice(i, i + ev.batch_size)
        a = ev.split.tensors(first[part])["images"].to(ev.device)
        b = ev.split.tensors(second[part])["images"].to(ev.device)
        codes = LM.interpolated_codes(ev.model, a, b, ratios[part].to(ev.device))
        yield ev.model.decode_indices(codes).cpu()


def sample_codes(prior, n: int, shape: tuple[int, int], seed: int, batch_size: int, device: str) -> Tensor:
    """n code maps from the prior (class-conditional priors: uniformly drawn classes)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        labels = None
        if prior.num_classes is not None:
            labels = torch.randint(0, prior.num_classes, (m,), generator=generator, device=device)
        out.append(prior.sample(m, *shape, labels=labels, generator=generator, device=device).cpu())
    return torch.cat(out)


def check_prior_fits(prior, model, codes: Tensor) -> None:
    """The prior must model this model's codebook on code maps of this size."""
    if prior.num_codes != model.quantizer.num_codes:
        raise MismatchError(f"the prior models {prior.num_codes} codes, the image model has {model.quantizer.num_codes}")
    shape = tuple(codes.shape[1:])
    if prior.height is not None and (prior.height, prior.width) != shape:
        raise MismatchError(f"the prior was trained on {prior.height}x{prior.width} code maps, the model gives {shape[0]}x{shape[1]}")


# ----- command line -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechsq image-fid",
        description="SQ-VAE Table 2 for one image model: MSE, rFID, generation FID (with a PixelCNN prior), "
        "Neighbor-k and interpolation FIDs. Standard FID with --inception-weights, else an offline FD in the "
        "feature space of a classifier trained on the dataset (labelled as such; not comparable to published FID).",
    )
    parser.add_argument("--checkpoint", required=True, help="the image model (exp/<tag>/checkpoints/last.pt)")
    parser.add_argument("--prior", default=None, help="its PixelCNN prior checkpoint (speechsq train experiment=prior_*); "
                        "without it the generation column is left empty")  # fmt: skip
    parser.add_argument("--split", default="test", choices=("valid", "test"), help="the reference images (default: test)")
    parser.add_argument("--data-root", default=None, help="override data.root of the image model's config")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of the split")
    parser.add_argument("--inception-weights", default=None,
                        help="local torch-fidelity Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth): standard FID")  # fmt: skip
    parser.add_argument("--classifier-dir", default=None,
                        help="cache of the offline FD classifier (trained there on the training split the first time); "
                        "default: fd_classifier/ beside the model's run directory (exp/<tag>/fd_classifier for "
                        "exp/<tag>/<quantizer>/checkpoints/last.pt)")  # fmt: skip
    parser.add_argument("--classifier-steps", type=int, default=600, help="training steps of the offline FD classifier")
    parser.add_argument("--neighbors", default=",".join(map(str, NEIGHBOR_KS)), help="the k of Neighbor-k (default 3,5,10)")
    parser.add_argument("--samples", type=int, default=None, help="generated images (default: as many as the split has)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples, pairs and mixing ratios")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the row as JSON here")
    parser.add_argument("--figure", default=None, help="draw the first 8 images of every column here (PNG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omegaconf import open_dict

    from speechsq.completion import atomic_write_json
    from speechsq.data.images import load_split_from_config
    from speechsq.threads import configure_threads
    from speechsq.training import load_model

    configure_threads()
    try:
        ks = tuple(int(k) for k in args.neighbors.split(",") if k.strip())
    except ValueError:
        raise LM.ManipulationError(f"--neighbors must be comma-separated integers, got {args.neighbors!r}") from None
    model, cfg = load_model(args.checkpoint, device=args.device)
    if not hasattr(model, "decode_indices"):
        raise MismatchError(f"{args.checkpoint} is not an image model checkpoint (model.name={cfg.model.name})")
    with open_dict(cfg):
        if args.data_root is not None:
            cfg.data.root = args.data_root
        cfg.data.limit = args.limit
    split = load_split_from_config(cfg.data, args.split)
    classifier_dir = args.classifier_dir or Path(args.checkpoint).resolve().parent.parent.parent / "fd_classifier"
    train = valid = None
    if not args.inception_weights:
        with open_dict(cfg):
            cfg.data.limit = None  # the classifier learns from the whole training split
        train, valid = load_split_from_config(cfg.data, "train"), load_split_from_config(cfg.data, "valid")
    space = build_feature_space(args.inception_weights, classifier_dir, train, valid, device=args.device,
                                classifier_steps=args.classifier_steps)  # fmt: skip
    prior = None
    if args.prior:
        prior, _ = load_model(args.prior, device=args.device)
        if not hasattr(prior, "sample"):
            raise MismatchError(f"{args.prior} is not a prior checkpoint (model.name=pixelcnn_prior)")
    row = evaluate_table2(model, split, space, prior, ks, args.samples, args.seed, args.batch_size, args.device, args.figure)
    text = json.dumps(row.as_dict(), indent=2)
    if args.out:
        atomic_write_json(args.out, row.as_dict())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
