"""Figures of an experiment directory that a reader understands without the code (PNG, Agg).

    speechsq plots --exp-dir exp/<tag> [--feats feats/parallel --data-dir data/parallel --utts U1 U2]

``training_curves.png``  one loss panel per quantizer (their objectives differ, so they never
                         share an axis); the training reconstruction MSE in dB² (the unit of
                         the results table); codebook perplexity with a line at each codebook
                         size; and the annealing parameter of every model that has one
                         (SQ-VAE σ²_φ, vMF κ_φ, softmax temperature τ). Read from the
                         TensorBoard event files of ``<quantizer>/seed<N>/tensorboard``
                         (or ``train.log``), with each run's ``config.yaml``.
``reconstructions.png``  input log-Mel and each quantizer's deterministic reconstruction, in dB
                         with a colourbar per utterance, MSE in dB² as the table computes it
                         (:mod:`speechsq.eval.mse`: every frame, dB via ``top_db`` or the
                         cmvn standard deviations).
``code_usage.png``       per run, written by ``speechsq evaluate``
                         (:func:`speechsq.eval.codebook.plot_code_usage`).

Every figure says which set, runs and seeds it shows. The figures are described by small
dataclasses (:class:`CurvePanel`, :class:`ImagePanel`) that the tests check, and drawn by
:func:`draw_curves` / :func:`draw_images`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

_LOG_LINE = re.compile(r"step (\d+): (.*)$")
LOSS_TAG = "loss"
MSE_TAG = "metrics/mse"
PERPLEXITY_TAG = "metrics/quantizer/perplexity"
# annealing parameter tag -> (panel title, y label, y scale)
ANNEALING = {
    "metrics/quantizer/sigma2_phi": ("SQ-VAE posterior variance σ²_φ (self-annealing)", "σ²_φ (latent units²)", "log"),
    "metrics/quantizer/kappa_phi": ("vMF SQ-VAE concentration κ_φ (self-annealing)", "κ_φ", "log"),
    "metrics/quantizer/temperature": ("softmax temperature τ (schedule)", "τ", "linear"),
}
# tags of the text log (train.log) lines of the trainer
_TEXT_LOG_TAGS = {"loss": LOSS_TAG, "mse": MSE_TAG, "perplexity": PERPLEXITY_TAG}


class PlotError(SpeechsqError, FileNotFoundError):
    """Nothing to draw: a missing experiment directory, no runs, unknown utterances."""


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


def figure_to_array(fig, dpi: int = 80) -> np.ndarray:
    """Render and close a figure: ``(H, W, 3)`` uint8 RGB (for TensorBoard images)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    _pyplot().close(fig)
    return np.ascontiguousarray(rgba[..., :3])


# ----------------------------------------------------------------------------- dB conversion


@dataclass
class FeatureDb:
    """Feature values -> dB for display, and the per-band factor that turns a feature
    difference into a dB difference (:func:`speechsq.eval.mse.db_scale`)."""

    scale: np.ndarray  # (n_mels,)
    offset: np.ndarray  # (n_mels,): dB = feats * scale + offset
    label: str

    def to_db(self, feats: np.ndarray) -> np.ndarray:
        """(n_mels, T) features -> dB."""
        return np.asarray(feats, np.float64) * self.scale[:, None] + self.offset[:, None]

    def mse_db2(self, estimate: np.ndarray, reference: np.ndarray) -> float:
        """Pooled MSE in dB² over the common frames of two (n_mels, T) feature arrays."""
        from speechsq.eval.mse import squared_error_db

        t = min(estimate.shape[1], reference.shape[1])
        return squared_error_db(estimate[:, :t], reference[:, :t], self.scale) / (len(self.scale) * t)

    @property
    def scalar_factor(self) -> float:
        """Factor from a pooled feature-unit MSE to dB²: exact when every band has the same
        scale (ZeroSpeech features), the mean of the squared scales otherwise."""
        return float(np.mean(self.scale**2))

    @property
    def scalar_exact(self) -> bool:
        return bool(np.all(self.scale == self.scale[0]))


def feature_db(preprocessing: Mapping, cmvn=None) -> FeatureDb | None:
    """The dB conversion of a ``preprocessing`` config (``None`` when it cannot be known:
    standardised features without their ``cmvn.npz``)."""
    from speechsq.eval.mse import db_scale

    n_mels = int(preprocessing["n_mels"])
    if bool(preprocessing.get("standardize", False)):
        if cmvn is None:
            return None
        scale = db_scale(n_mels, cmvn_std=cmvn.std)
        return FeatureDb(scale, np.asarray(cmvn.mean, np.float64), "log-Mel magnitude (dB re 1)")
    top_db = preprocessing.get("top_db")
    if top_db is not None:  # ZeroSpeech: dB / top_db + 1 of the peak-normalised, pre-emphasised signal
        offset = -float(top_db) if preprocessing.get("add_one", True) else 0.0
        return FeatureDb(db_scale(n_mels, top_db=float(top_db)), np.full(n_mels, offset),
                         "log-Mel magnitude (dB, peak-normalised signal)")
    return FeatureDb(np.ones(n_mels), np.zeros(n_mels), "log-Mel magnitude (dB re 1)")  # features already in dB


def mel_band_ticks(preprocessing: Mapping, n_ticks: int = 5) -> list[tuple[int, str]]:
    """(band index, centre frequency label) for a mel axis."""
    import librosa

    n_mels = int(preprocessing["n_mels"])
    centres = librosa.mel_frequencies(n_mels + 2, fmin=float(preprocessing["fmin"]), fmax=float(preprocessing["fmax"]))[1:-1]
    bands = np.unique(np.linspace(0, n_mels - 1, n_ticks).round().astype(int))
    return [(int(b), f"{centres[b] / 1000:.1f}") for b in bands]


# ----------------------------------------------------------------------------- curves


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray


@dataclass
class CurvePanel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, legend label)
    yscale: str = "linear"


def draw_curves(panels: Sequence[CurvePanel], path: str | Path, suptitle: str, ncols: int = 3) -> Path:
    plt = _pyplot()
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows + 0.6), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for s in panel.series:
            ax.plot(s.x, s.y, label=s.label, linewidth=1.2)
        for y, label in panel.hlines:
            ax.axhline(y, color="0.3", linestyle="--", linewidth=1.0, label=label)
        values = np.concatenate([np.asarray(s.y, np.float64) for s in panel.series] or [np.ones(1)])
        positive = values[values > 0]
        # a log axis only when the values span a decade or more (else its ticks read 9.2x10^0)
        if panel.yscale == "log" and len(positive) == len(values) and positive.max() >= 10 * positive.min():
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def read_scalars(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``tag -> (steps, values)`` from ``<run>/tensorboard`` event files, else ``train.log``."""
    run_dir = Path(run_dir)
    out: dict[str, tuple[list, list]] = {}
    tb = run_dir / "tensorboard"
    if tb.is_dir() and any(tb.glob("events.out.tfevents*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        # tensorboard logs "No path found after <file>" at INFO for every finished event
        # file it reads to the end: routine, not news.
        logging.getLogger("tensorboard").setLevel(logging.WARNING)
        acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            events = acc.Scalars(tag)
            out[tag] = ([e.step for e in events], [e.value for e in events])
    elif (run_dir / "train.log").is_file():
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
                tag = _TEXT_LOG_TAGS.get(key, key)
                out.setdefault(tag, ([], []))
                out[tag][0].append(step)
                out[tag][1].append(number)
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in out.items()}


@dataclass
class RunInfo:
    """What a figure needs to know about one training run (from its ``config.yaml``)."""

    label: str  # <quantizer dir>/seed<N>
    quantizer: str  # quantizer dir name (the results-table row)
    seed: str
    num_codes: int | None = None
    loss_normalization: str = "example"
    preprocessing: dict | None = None
    feats_dir: str | None = None


def run_info(label: str, run_dir: str | Path) -> RunInfo:
    quantizer, _, seed = label.partition("/")
    info = RunInfo(label, quantizer, seed.removeprefix("seed") or "?")
    config = Path(run_dir) / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=False)
        q, m, d = cfg.get("quantizer") or {}, cfg.get("model") or {}, cfg.get("data") or {}
        info.num_codes = int(q["num_codes"]) if q.get("num_codes") is not None else None
        info.loss_normalization = str(m.get("loss_normalization", "example"))
        info.preprocessing = cfg.get("preprocessing")
        info.feats_dir = d.get("feats_dir")
    return info


def _display(quantizer: str) -> str:
    """The run's table name (``vq_ema_sigma2_0.1`` -> ``VQ-VAE w/ EMA (σ² = 0.1)``)."""
    from speechsq.eval.report import display_name

    return display_name(quantizer)


def _load_cmvn(info: RunInfo):
    from speechsq.features import Cmvn

    if info.feats_dir and (Path(info.feats_dir) / "cmvn.npz").is_file():
        return Cmvn.load(Path(info.feats_dir) / "cmvn.npz")
    return None


def curve_panels(
    scalars: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], infos: Mapping[str, RunInfo]
) -> list[CurvePanel]:
    """The panels of ``training_curves.png`` (see the module docstring); label -> run."""
    step = "training step"
    panels: list[CurvePanel] = []
    by_quantizer: dict[str, list[str]] = {}
    for label in scalars:
        by_quantizer.setdefault(infos[label].quantizer, []).append(label)
    for quantizer, labels in by_quantizer.items():
        norm = infos[labels[0]].loss_normalization
        unit = "per data dimension" if norm == "dimension" else "per training example"
        panel = CurvePanel(f"{_display(quantizer)}: training loss (NLL + latent term)", step, f"loss ({unit})")
        for label in labels:
            if LOSS_TAG in scalars[label]:
                panel.series.append(Series(f"seed {infos[label].seed}", *scalars[label][LOSS_TAG]))
        panels.append(panel)

    mse = CurvePanel("reconstruction MSE on training segments", step, "MSE (dB²)")
    approximate, unconverted = False, False
    for label, series in scalars.items():
        if MSE_TAG not in series:
            continue
        info = infos[label]
        conversion = feature_db(info.preprocessing, _load_cmvn(info)) if info.preprocessing else None
        x, y = series[MSE_TAG]
        if conversion is None:
            unconverted = True
            mse.series.append(Series(f"{label} (feature units²)", x, y))
            continue
        approximate |= not conversion.scalar_exact
        mse.series.append(Series(label, x, y * conversion.scalar_factor))
    if approximate:
        mse.ylabel = "MSE (dB², ≈: pooled error × mean cmvn variance)"
    if unconverted:
        mse.title += " (runs without config/cmvn in feature units²)"
    panels.append(mse)

    perplexity = CurvePanel("codebook perplexity (training batches)", step, "perplexity (effective number of codes)")
    for label, series in scalars.items():
        if PERPLEXITY_TAG in series:
            perplexity.series.append(Series(label, *series[PERPLEXITY_TAG]))
    for size in sorted({infos[label].num_codes for label in scalars if infos[label].num_codes}):
        perplexity.hlines.append((float(size), f"codebook size K = {size}"))
    panels.append(perplexity)

    for tag, (title, ylabel, yscale) in ANNEALING.items():
        panel = CurvePanel(title, step, ylabel, yscale=yscale)
        for label, series in scalars.items():
            if tag in series:
                panel.series.append(Series(label, *series[tag]))
        if panel.series:
            panels.append(panel)
    return panels


def training_curves(runs: Mapping[str, str | Path], path: str | Path, title: str | None = None) -> Path | None:
    """``training_curves.png`` of runs (``<quantizer>/seed<N>`` label -> run dir)."""
    scalars = {label: read_scalars(run) for label, run in runs.items()}
    scalars = {label: s for label, s in scalars.items() if s}
    if not scalars:
        log.warning("no training scalars found in %s", list(runs.values()))
        return None
    infos = {label: run_info(label, runs[label]) for label in scalars}
    feats = sorted({str(i.feats_dir) for i in infos.values() if i.feats_dir})
    seeds: dict[str, list[str]] = {}
    for info in infos.values():
        seeds.setdefault(info.quantizer, []).append(info.seed)
    covers = "; ".join(f"{q} (seed {', '.join(s)})" for q, s in seeds.items())
    suptitle = (
        f"{title + ': ' if title else ''}training curves of {covers}\n"
        f"values averaged between log points, on random training segments of {', '.join(feats) or 'the training set'}"
    )
    return draw_curves(curve_panels(scalars, infos), path, suptitle)


# ----------------------------------------------------------------------------- spectrograms


@dataclass
class ImagePanel:
    title: str
    image: np.ndarray  # (n_mels, T) in display units
    frame_shift: float  # seconds per column
    vmin: float
    vmax: float
    colour_label: str
    yticks: list[tuple[int, str]] = field(default_factory=list)  # (band, label)
    ylabel: str = "mel band"


def draw_images(rows: Sequence[Sequence[ImagePanel]], suptitle: str):
    """A grid of spectrograms, one colourbar per row (the row shares its colour scale)."""
    plt = _pyplot()
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.8 * ncols + 0.8, 2.6 * len(rows) + 0.7), squeeze=False,
                             layout="constrained")
    for r, row in enumerate(rows):
        image = None
        for c, panel in enumerate(row):
            ax = axes[r][c]
            extent = (0, panel.image.shape[1] * panel.frame_shift, -0.5, panel.image.shape[0] - 0.5)
            image = ax.imshow(panel.image, origin="lower", aspect="auto", cmap="magma",
                              vmin=panel.vmin, vmax=panel.vmax, extent=extent, interpolation="nearest")
            ax.set_title(panel.title, fontsize=9)
            ax.set_xlabel("time (s)", fontsize=8)
            if panel.yticks:
                ax.set_yticks([b for b, _ in panel.yticks], [t for _, t in panel.yticks])
            ax.set_ylabel(panel.ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
        for c in range(len(row), ncols):
            axes[r][c].set_visible(False)
        bar = fig.colorbar(image, ax=list(axes[r][: len(row)]), fraction=0.025, pad=0.01)
        bar.set_label(row[0].colour_label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(suptitle, fontsize=10)
    return fig


def reconstruction_panels(
    inputs: Mapping[str, np.ndarray],
    reconstructions: Mapping[str, Mapping[str, np.ndarray]],
    db: FeatureDb | None = None,
    frame_shift: float = 0.01,
    yticks: list[tuple[int, str]] | None = None,
    speakers: Mapping[str, str] | None = None,
    errors: Mapping[str, Mapping[str, float]] | None = None,
) -> list[list[ImagePanel]]:
    """One row per utterance: the input and every model's reconstruction (model label -> utt
    -> (n_mels, T) features). With ``db`` the images are in dB and the titles give the MSE in
    dB²: ``errors`` (model -> utt -> dB²) when given (``speechsq plots`` passes the values of
    :func:`speechsq.eval.mse.evaluate_mse`, the table's), else over every frame. Without
    ``db`` everything stays in feature units (the labels say so)."""
    rows = []
    ylabel = "frequency (kHz, mel scale)" if yticks else "mel band"
    for utt, x in inputs.items():
        x = np.asarray(x, np.float64)
        shown = db.to_db(x) if db else x
        lo, hi = float(shown.min()), float(shown.max())
        colour = db.label if db else "log-Mel feature value (no dB conversion known)"
        who = f" ({speakers[utt]})" if speakers and utt in speakers else ""
        row = [ImagePanel(f"input {utt}{who}", shown, frame_shift, lo, hi, colour, yticks or [], ylabel)]
        for label, per_utt in reconstructions.items():
            y = np.asarray(per_utt[utt], np.float64)
            if db and errors is not None:
                error = f"MSE {errors[label][utt]:.2f} dB² (as in the table)"
            elif db:
                error = f"MSE {db.mse_db2(y, x):.2f} dB² (all frames)"
            else:
                t = min(x.shape[1], y.shape[1])
                error = f"MSE {float(np.mean((y[:, :t] - x[:, :t]) ** 2)):.4g} (feature units²)"
            row.append(ImagePanel(f"{_display(label)}\n{error}", db.to_db(y) if db else y, frame_shift, lo, hi, colour,
                                  yticks or [], ylabel))
        rows.append(row)
    return rows


def reconstruction_figure(
    inputs: Mapping[str, np.ndarray],
    reconstructions: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    frame_shift: float = 0.01,
    db: FeatureDb | None = None,
    yticks: list[tuple[int, str]] | None = None,
    covers: str = "",
    speakers: Mapping[str, str] | None = None,
    errors: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """inputs: utt -> (n_mels, T); reconstructions: model label -> utt -> (n_mels, T)."""
    rows = reconstruction_panels(inputs, reconstructions, db, frame_shift, yticks, speakers, errors)
    suptitle = "Input log-Mel and deterministic reconstructions (own speaker)" + (f"\n{covers}" if covers else "")
    fig = draw_images(rows, suptitle)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------- experiment


def find_runs(exp_dir: str | Path) -> dict[str, Path]:
    """``<quantizer>/seed<N>`` label -> run dir (directories with a tensorboard/ or train.log)."""
    runs = {}
    for run in sorted(Path(exp_dir).glob("*/seed*")):
        if (run / "tensorboard").is_dir() or (run / "train.log").is_file():
            runs[f"{run.parent.name}/{run.name}"] = run
    return runs


def reconstruct_with_checkpoints(
    checkpoints: Mapping[str, str | Path],
    feats: Mapping[str, np.ndarray],
    utts: Sequence[str],
    speakers: Sequence[str],
    db: FeatureDb | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]] | None]:
    """label -> utt -> (n_mels, T) deterministic reconstructions, and with ``db`` label -> utt
    -> MSE in dB² computed exactly as the results table (:func:`~speechsq.eval.mse.evaluate_mse`)."""
    import torch

    from speechsq.eval.mse import evaluate_mse
    from speechsq.training import load_model

    out: dict[str, dict[str, np.ndarray]] = {}
    errors: dict[str, dict[str, float]] | None = {} if db is not None else None
    for label, ckpt in checkpoints.items():
        model, _ = load_model(ckpt)
        out[label] = {}
        for utt, spk in zip(utts, speakers):
            x = torch.from_numpy(np.array(feats[utt], np.float32).T[None].copy())
            speaker = model.speaker_ids([spk])
            out[label][utt] = model.reconstruct(x, torch.tensor([x.shape[-1]]), speaker)[0].numpy()
        if errors is not None:
            result = evaluate_mse(model, {u: feats[u] for u in utts}, list(zip(utts, speakers)), db.scale, progress=False)
            errors[label] = result.per_utterance
    return out, errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speechsq plots",
        description="training_curves.png and reconstructions.png of an experiment directory (exp/<tag>).",
    )
    p.add_argument("--exp-dir", required=True, help="experiment directory with <quantizer>/seed<N>/ runs")
    p.add_argument("--feats", help="feature dir of the utterances to reconstruct (e.g. feats/parallel)")
    p.add_argument("--data-dir", help="data dir with utt2spk of those utterances (default: --feats)")
    p.add_argument("--utts", nargs="*", default=None, help="utterances to show (default: the first two)")
    p.add_argument("--cmvn", help="cmvn.npz of standardised features (default: next to the training features)")
    return p


def _reconstructions(args, exp_dir: Path) -> Path | None:
    from omegaconf import OmegaConf

    from speechsq.data_prep.kaldi_dir import read_table
    from speechsq.features import Cmvn, FeatureReader

    feats = FeatureReader(args.feats)
    utt2spk = read_table(Path(args.data_dir or args.feats) / "utt2spk")
    utts = args.utts or sorted(u for u in feats if u in utt2spk)[:2]
    unknown = [u for u in utts if u not in feats or u not in utt2spk]
    if unknown:
        raise PlotError(f"utterance(s) {unknown} are not in {args.feats} and its utt2spk")
    checkpoints, seeds = {}, {}
    for quantizer_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
        ckpts = sorted(quantizer_dir.glob("seed*/checkpoints/last.pt"))
        if ckpts:
            checkpoints[quantizer_dir.name] = ckpts[0]
            seeds[quantizer_dir.name] = ckpts[0].parent.parent.name
    if not checkpoints:
        log.warning("no checkpoints under %s: no reconstructions.png", exp_dir)
        return None
    first = next(iter(checkpoints.values())).parent.parent
    info = run_info(f"{first.parent.name}/{first.name}", first)
    db = yticks = None
    frame_shift = 0.01
    if info.preprocessing:
        pre = OmegaConf.to_container(OmegaConf.create(info.preprocessing), resolve=True)
        cmvn = Cmvn.load(args.cmvn) if args.cmvn else _load_cmvn(info)
        db = feature_db(pre, cmvn)
        yticks = mel_band_ticks(pre)
        frame_shift = float(pre["hop_length"]) / float(pre["sample_rate"])
    recon, errors = reconstruct_with_checkpoints(checkpoints, feats, utts, [utt2spk[u] for u in utts], db)
    covers = f"set: {args.feats} (utt2spk {Path(args.data_dir or args.feats) / 'utt2spk'}); " + ", ".join(
        f"{q} {s}" for q, s in seeds.items()) + " (checkpoints/last.pt)"
    return reconstruction_figure({u: np.asarray(feats[u]).T for u in utts}, recon, exp_dir / "reconstructions.png",
                                 frame_shift, db, yticks, covers, {u: utt2spk[u] for u in utts}, errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exp_dir = Path(args.exp_dir)
    if not exp_dir.is_dir():
        raise PlotError(f"experiment directory {exp_dir} does not exist (run the recipe's training stage first)")
    runs = find_runs(exp_dir)
    if not runs and not args.feats:
        raise PlotError(f"no runs (<quantizer>/seed<N>/ with tensorboard/ or train.log) under {exp_dir}")
    curves = training_curves(runs, exp_dir / "training_curves.png", title=exp_dir.name) if runs else None
    if curves:
        log.info("wrote %s", curves)
    if args.feats:
        path = _reconstructions(args, exp_dir)
        if path:
            log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
