"""SQ-VAE Figure 2 (Section 3.3, App. D.3): self-annealing of the trainable sigma_phi^2.

Trains Gaussian SQ-VAE (I) (``sq_gauss1``: trainable sigma_phi^2) and the fixed stochastic
quantization ``sq_fixed`` at several sigma_q^2 through the shared trainer, with the two-layer
ConvNet of App. D.3, (d_b, K) = (64, 128), Adam 1e-3, and the decoder variance sigma^2 at
its per-batch optimum (``--likelihood closed_form``, the reference code; ``trainable`` is
eq. 8 with a learned scalar, which needs the paper's ~10^5 steps), then plots over training

  (a) sigma_phi^2 and sigma^2 relative to their initial values (trainable run),
  (b) the average entropy of the quantization posterior,
  (c) the test MSE of every run (from the intermediate checkpoints).

    python local/self_annealing.py                                   # digits, CPU, minutes
    python local/self_annealing.py --dataset mnist --data-root /data/mnist --steps 30000 --device cuda

Outputs in ``--out`` (exp/self_annealing): one run directory per model, curves.json and
self_annealing.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("self_annealing")

EXPERIMENTS = {"digits": "images_digits", "mnist": "images_mnist", "fashion_mnist": "images_fashion_mnist"}
# the decoder variance sigma^2: a trainable scalar (eq. 8; Adam moves log sigma^2 by about
# lr per step, so it needs the paper's ~10^5 steps to anneal), or its per-batch optimum
# sigma^2 = MSE (the reference code), which anneals as fast as the reconstruction improves
LIKELIHOODS = {
    "trainable": ["quantizer.likelihood.name=gaussian_trainable", "+quantizer.likelihood.init_sigma2=1.0"],
    "closed_form": ["quantizer.likelihood.name=gaussian_closed_form"],
}


def scalar_series(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    """One scalar's (steps, values) from the run's tensorboard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return [], []
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def train_one(name: str, overrides: list[str], out: Path) -> Path:
    from speechsq.training import build_run, compose_config

    run_dir = out / name
    if (run_dir / "checkpoints" / "last.pt").is_file():
        log.info("%s: already trained, reusing %s", name, run_dir)
        return run_dir
    cfg = compose_config([*overrides, f"exp_dir={run_dir}"])
    log.info("training %s (%d steps)", name, cfg.training.steps)
    build_run(cfg).fit()
    return run_dir


def test_mse_curve(run_dir: Path, split) -> tuple[list[int], list[float]]:
    from speechsq.eval.image_metrics import evaluate_image_model
    from speechsq.training import load_model

    points = sorted(run_dir.glob("checkpoints/step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    steps, mse = [], []
    for path in points:
        model, _ = load_model(path)
        steps.append(int(path.stem.split("_")[1]))
        mse.append(evaluate_image_model(model, split).mse_x1e3)
    return steps, mse


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    trainable = curves["trainable"]
    for key, label, colour in (("sigma2_phi", r"$\sigma_\varphi^2/\sigma_{\varphi,0}^2$", "tab:blue"), ("sigma2", r"$\sigma^2/\sigma_0^2$", "tab:red")):
        steps, values = trainable[key]
        if values:
            axes[0].plot(steps, [v / values[0] for v in values], label=label, color=colour)
    axes[0].set(xlabel="step", ylabel="relative to initial value", yscale="log", title="(a) variance parameters")
    for name, run in curves.items():
        style = dict(color="black", linewidth=2) if name == "trainable" else {}
        steps, values = run["entropy"]
        if values:
            axes[1].plot(steps, values, label=run["label"], **style)
        steps, values = run["test_mse_x1e3"]
        if values:
            axes[2].plot(steps, values, marker="o", label=run["label"], **style)
    axes[1].set(xlabel="step", ylabel="average entropy (nats)", title="(b) entropy of the quantization")
    axes[2].set(xlabel="step", ylabel="test MSE (x1e3)", yscale="log", title="(c) test MSE")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=sorted(EXPERIMENTS))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--sigma2-q", default="0.01,0.1,1,10", help="fixed sigma_q^2 values for sq_fixed (comma separated)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--points", type=int, default=6, help="checkpoints (test-MSE points) per run")
    parser.add_argument("--num-codes", type=int, default=128)
    parser.add_argument("--code-dim", type=int, default=64)
    parser.add_argument("--temperature-decay", type=float, default=None, help="Gumbel tau decay per step (default: the experiment's)")
    parser.add_argument("--likelihood", default="closed_form", choices=sorted(LIKELIHOODS), help="decoder variance sigma^2 (see LIKELIHOODS)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="exp/self_annealing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    if args.dataset != "digits" and not args.data_root:
        parser.error(f"--data-root is required for --dataset {args.dataset}")

    from speechsq.data.images import load_image_dataset

    out = Path(args.out)
    every = max(1, args.steps // args.points)
    common = [
        f"experiment={EXPERIMENTS[args.dataset]}", "model=image_two_layer",
        f"quantizer.num_codes={args.num_codes}", f"quantizer.code_dim={args.code_dim}",
        *LIKELIHOODS[args.likelihood],
        f"training.steps={args.steps}", f"training.checkpoint_every={every}", f"training.log_every={max(1, every // 5)}",
        "training.milestones=[]", "training.lr=1e-3", f"training.device={args.device}", "training.progress=false",
    ]  # fmt: skip
    if args.data_root:
        common.append(f"data.root={args.data_root}")
    if args.temperature_decay is not None:
        common.append(f"training.temperature.decay={args.temperature_decay}")
    runs = {"trainable": (["quantizer=sq_gauss1"], r"trainable $\sigma_\varphi^2$")}
    for value in args.sigma2_q.split(","):
        runs[f"fixed_{value}"] = (["quantizer=sq_fixed", f"quantizer.options.sigma2={value}"], rf"fixed $\sigma_q^2$={value}")

    test = load_image_dataset(args.dataset, "test", root=args.data_root)
    curves = {}
    for name, (extra, label) in runs.items():
        # the quantizer group goes first so that its keys can be overridden after it
        run_dir = train_one(name, [extra[0], *common, *extra[1:]], out)
        curves[name] = {
            "label": label,
            "sigma2_phi": scalar_series(run_dir, "metrics/quantizer/sigma2_phi"),
            "sigma2": scalar_series(run_dir, "metrics/sigma2"),
            "entropy": scalar_series(run_dir, "metrics/quantizer/entropy"),
            "test_mse_x1e3": test_mse_curve(run_dir, test),
        }
    (out / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    plot(curves, out / "self_annealing.png")

    print(f"{'run':<16} {'final test MSE (x1e3)':>22} {'final entropy':>14} {'sigma2_phi end/start':>21}")
    for name, run in curves.items():
        mse = run["test_mse_x1e3"][1][-1] if run["test_mse_x1e3"][1] else float("nan")
        ent = abs(run["entropy"][1][-1]) if run["entropy"][1] else float("nan")  # no "-0.000"
        s = run["sigma2_phi"][1]
        ratio = f"{s[-1] / s[0]:.3g}" if s and name == "trainable" else "-"
        print(f"{name:<16} {mse:>22.2f} {ent:>14.3f} {ratio:>21}")
    print(f"plot: {out / 'self_annealing.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
