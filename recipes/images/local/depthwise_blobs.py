"""Depthwise VQ on a static prior (Fostiropoulos, "Depthwise Discrete Representation
Learning", Sec. 4.1 and Figure 3): reconstruction loss against the feature dimension D.

The "prior" is fixed data: points of a Gaussian mixture with ``--factors`` components
(the latent factors; scikit-learn's ``make_blobs``), standardised per feature. Three
quantizers are fitted to it through the shared trainer, each with the paper's gradient
objective (the VQ codebook loss, eq. 1) and a uniform codebook initialisation:

* ``DVQ``: ``depthwise`` with G codebooks of K / G codes, each on a disjoint slice of D / G
  features (the same total number of code vectors as VQ, but (K/G)^G combinations);
* ``VQ``: one codebook of K codes on all D features;
* ``VQ large``: one codebook of ``--large`` codes (more than K, fewer than the factors).

The reported loss is the mean squared quantization error per feature on held-out points,
averaged over ``--repeats`` Monte-Carlo draws of the data set (the paper's
cross-validation), for every D in ``--dims``.

    python local/depthwise_blobs.py                      # a few CPU minutes
    python local/depthwise_blobs.py --dims 2,4,8,16,32,64,128 --steps 4000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger("depthwise_blobs")


class BlobSource:
    """Random minibatches of the training points (the trainer's batch-source contract)."""

    def __init__(self, points: np.ndarray, batch_size: int, seed: int):
        self.points = torch.from_numpy(points.astype(np.float32))
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def next_batch(self) -> dict[str, Tensor]:
        return {"x": self.points[self.rng.integers(0, len(self.points), self.batch_size)]}

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class StaticPrior(nn.Module):
    """No encoder or decoder: the quantizer models the data directly (the static prior).

    Each point is a length-1 sequence (B, 1, D) for the quantizer; the loss is the
    quantizer's own (codebook + commitment; the commitment has no gradient here)."""

    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, batch: dict[str, Tensor], ctx=None):
        from speechsq.models.base import ModelOutput

        x = batch["x"][:, None, :]
        q = self.quantizer(x, None, ctx)
        mse = (q.z_q.detach() - x).pow(2).mean()
        return ModelOutput(loss=q.loss, terms=dict(q.terms), metrics={"mse": mse, **q.metrics})

    @torch.no_grad()
    def quantization_mse(self, points: np.ndarray) -> float:
        self.eval()
        x = torch.from_numpy(points.astype(np.float32))[:, None, :]
        return float((self.quantizer(x).z_q - x).pow(2).mean())


def make_points(dim: int, factors: int, n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=n, n_features=dim, centers=factors, cluster_std=1.0, center_box=(-10, 10), random_state=seed)
    return x


def fit(name: str, quantizer, train: np.ndarray, args, exp_dir: Path, seed: int) -> StaticPrior:
    from speechsq.training import Trainer, TrainerConfig

    model = StaticPrior(quantizer)
    config = TrainerConfig(
        steps=args.steps, lr=args.lr, milestones=(), grad_clip=0.0, device=args.device,
        checkpoint_every=args.steps, log_every=max(1, args.steps // 4), progress=False,
    )  # fmt: skip
    Trainer(model, BlobSource(train, args.batch_size, seed), config, exp_dir / name, seed=seed).fit()
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="4,8,16,32,64", help="feature dimensions D (each divisible by --groups)")
    parser.add_argument("--factors", type=int, default=1024, help="Gaussian mixture components (latent factors)")
    parser.add_argument("--codes", type=int, default=32, help="K: code vectors of VQ, and of DVQ in total")
    parser.add_argument("--groups", type=int, default=4, help="G: DVQ codebooks (K / G codes each)")
    parser.add_argument("--large", type=int, default=256, help="codes of the single large codebook")
    parser.add_argument("--points", type=int, default=20000, help="training points (plus 20%% held out)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--repeats", type=int, default=2, help="Monte-Carlo repetitions (new data set and init)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="exp/depthwise_blobs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    dims = [int(d) for d in args.dims.split(",")]
    if args.codes % args.groups or any(d % args.groups for d in dims):
        parser.error("--groups must divide --codes and every dimension")

    from speechsq.quantizers import build_quantizer

    out = Path(args.out)
    models = {
        "DVQ": lambda d: build_quantizer("depthwise", num_codes=args.codes // args.groups, code_dim=d, groups=args.groups, inner="vq"),
        "VQ": lambda d: build_quantizer("vq", num_codes=args.codes, code_dim=d),
        "VQ large": lambda d: build_quantizer("vq", num_codes=args.large, code_dim=d),
    }
    results: dict[str, dict[int, list[float]]] = {name: {d: [] for d in dims} for name in models}
    for d in dims:
        for r in range(args.repeats):
            seed = 1000 * d + r
            x = make_points(d, args.factors, int(args.points * 1.25), seed)
            x = (x - x.mean(0)) / x.std(0)  # standardised: the uniform code init lies inside the data
            train, test = x[: args.points], x[args.points :]
            for name, build in models.items():
                torch.manual_seed(seed)
                model = fit(f"D{d}_r{r}_{name.replace(' ', '_')}", build(d), train, args, out, seed)
                results[name][d].append(model.quantization_mse(test))
            log.info("D=%d repeat %d: %s", d, r, ", ".join(f"{n}={results[n][d][-1]:.4f}" for n in models))

    summary = {name: {d: float(np.mean(v)) for d, v in per_dim.items()} for name, per_dim in results.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "mse": summary, "runs": results}, indent=1) + "\n")
    _plot(summary, dims, args, out / "depthwise_blobs.png")

    labels = {"DVQ": f"DVQ ({args.groups} x {args.codes // args.groups})", "VQ": f"VQ ({args.codes})", "VQ large": f"VQ ({args.large})"}
    print(f"test quantization MSE per feature (mean of {args.repeats}), {args.factors} latent factors")
    print(f"{'D':>5} " + " ".join(f"{labels[n]:>14}" for n in models))
    for d in dims:
        print(f"{d:>5} " + " ".join(f"{summary[n][d]:>14.4f}" for n in models))
    print(f"plot: {out / 'depthwise_blobs.png'}")
    return 0


def _plot(summary, dims, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"DVQ": f"DVQ ({args.groups} codebooks x {args.codes // args.groups})", "VQ": f"VQ ({args.codes})", "VQ large": f"VQ ({args.large})"}
    for name, per_dim in summary.items():
        ax.plot(dims, [per_dim[d] for d in dims], marker="o", label=labels[name])
    ax.set(xscale="log", xlabel="feature dimension D", ylabel="test reconstruction MSE per feature",
           title=f"static prior: {args.factors} Gaussian factors")  # fmt: skip
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
