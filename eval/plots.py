"""Pictures for an experiment directory (PNG, matplotlib Agg backend).

    speechsq plots --exp-dir exp/<tag> [--feats feats/parallel --utts U1 U2]

* ``reconstructions.png``: input log-Mel vs the reconstruction of every quantizer
  (SQ-VAE Figures 8-9), one row per utterance; uses the first seed's
  ``checkpoints/last.pt`` of each ``<quantizer>/seed<N>`` run.
* ``training_curves.png``: loss, reconstruction MSE and perplexity against the step,
  one line per run, read from the TensorBoard event files the trainer writes
  (``<run>/tensorboard``), or parsed from ``<run>/train.log`` when there are none.
* ``code_usage.png`` per run: written by ``speechsq evaluate`` (:func:`speechsq.eval.codebook.plot_code_usage`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CURVES = (("loss", "loss"), ("metrics/mse", "reconstruction MSE"), ("metrics/quantizer/perplexity", "perplexity"))
_LOG_LINE = re.compile(r"step (\d+): (.*)$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def reconstruction_figure(
    inputs: Mapping[str, np.ndarray],
    reconstructions: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    frame_shift: float = 0.01,
) -> Path:
    """inputs: utt -> (n_mels, T); reconstructions: model label -> utt -> (n_mels, T)."""
    plt = _pyplot()
    utts = list(inputs)
    columns = ["input"] + list(reconstructions)
    fig, axes = plt.subplots(len(utts), len(columns), figsize=(3.6 * len(columns), 2.4 * len(utts)), squeeze=False)
    for r, utt in enumerate(utts):
        x = np.asarray(inputs[utt])
        lo, hi = float(np.min(x)), float(np.max(x))
        for c, label in enumerate(columns):
            image = x if label == "input" else np.asarray(reconstructions[label][utt])
            ax = axes[r][c]
            extent = (0, image.shape[1] * frame_shift, 0, image.shape[0])
            ax.imshow(image, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma", extent=extent)
            if label != "input":
                mse = float(np.mean((image[:, : x.shape[1]] - x[:, : image.shape[1]]) ** 2))
                ax.set_title(f"{label}\nMSE {mse:.4g} (feature units)", fontsize=9)
            else:
                ax.set_title(f"input: {utt}", fontsize=9)
            ax.set_xlabel("time (s)", fontsize=8)
            if c == 0:
                ax.set_ylabel("mel channel", fontsize=8)
    return save_figure(fig, path)


def read_scalars(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``tag -> (steps, values)`` from ``<run>/tensorboard`` event files, else ``train.log``."""
    run_dir = Path(run_dir)
    out: dict[str, tuple[list, list]] = {}
    tb = run_dir / "tensorboard"
    if tb.is_dir() and any(tb.glob("events.out.tfevents*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            events = acc.Scalars(tag)
            out[tag] = ([e.step for e in events], [e.value for e in events])
    elif (run_dir / "train.log").is_file():
        short = {tag.split("/")[-1]: tag for tag, _ in CURVES}
        for line in (run_dir / "train.log").read_text().splitlines():
            match = _LOG_LINE.search(line)
            if not match:
                continue
            step = int(match.group(1))
            for part in match.group(2).split(", "):
                key, _, value = part.partition("=")
                try:
                    number = float(value)
                except ValueError:
                    continue
                tag = short.get(key, key)
                out.setdefault(tag, ([], []))
                out[tag][0].append(step)
                out[tag][1].append(number)
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in out.items()}


def training_curves(runs: Mapping[str, str | Path], path: str | Path) -> Path | None:
    """One panel per curve of :data:`CURVES`, one line per run (label -> run dir)."""
    plt = _pyplot()
    scalars = {label: read_scalars(run) for label, run in runs.items()}
    if not any(scalars.values()):
        log.warning("no training scalars found in %s", list(runs.values()))
        return None
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.5 * len(CURVES), 3.3))
    for ax, (tag, title) in zip(axes, CURVES):
        for label, series in scalars.items():
            if tag in series:
                ax.plot(*series[tag], label=label, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def find_runs(exp_dir: str | Path) -> dict[str, Path]:
    """``<quantizer>/seed<N>`` label -> run dir (directories with a tensorboard/ or train.log)."""
    runs = {}
    for run in sorted(Path(exp_dir).glob("*/seed*")):
        if (run / "tensorboard").is_dir() or (run / "train.log").is_file():
            runs[f"{run.parent.name}/{run.name}"] = run
    return runs


def reconstruct_with_checkpoints(
    checkpoints: Mapping[str, str | Path], feats: Mapping[str, np.ndarray], utts: Sequence[str], speakers: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """label -> utt -> (n_mels, T) deterministic reconstructions."""
    import torch

    from speechsq.training import load_model

    out: dict[str, dict[str, np.ndarray]] = {}
    for label, ckpt in checkpoints.items():
        model, _ = load_model(ckpt)
        out[label] = {}
        for utt, spk in zip(utts, speakers):
            x = torch.from_numpy(np.array(feats[utt], np.float32).T[None].copy())
            speaker = model.speaker_ids([spk])
            out[label][utt] = model.reconstruct(x, torch.tensor([x.shape[-1]]), speaker)[0].numpy()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechsq plots", description="Reconstruction figure and training curves of an experiment.")
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--feats", help="feature dir of the utterances to reconstruct")
    p.add_argument("--data-dir", help="data dir with utt2spk of those utterances (default: --feats)")
    p.add_argument("--utts", nargs="*", default=None, help="utterances to show (default: the first two)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exp_dir = Path(args.exp_dir)
    runs = find_runs(exp_dir)
    curves = training_curves(runs, exp_dir / "training_curves.png") if runs else None
    if curves:
        log.info("wrote %s", curves)
    if args.feats:
        from speechsq.data_prep.kaldi_dir import read_table
        from speechsq.features import FeatureReader

        feats = FeatureReader(args.feats)
        utt2spk = read_table(Path(args.data_dir or args.feats) / "utt2spk")
        utts = args.utts or sorted(u for u in feats if u in utt2spk)[:2]
        checkpoints = {}
        for quantizer_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
            ckpts = sorted(quantizer_dir.glob("seed*/checkpoints/last.pt"))
            if ckpts:
                checkpoints[quantizer_dir.name] = ckpts[0]
        if checkpoints:
            recon = reconstruct_with_checkpoints(checkpoints, feats, utts, [utt2spk[u] for u in utts])
            path = reconstruction_figure({u: np.asarray(feats[u]).T for u in utts}, recon, exp_dir / "reconstructions.png")
            log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
