"""Minimal-pair ABX discriminability, as the ZeroSpeech / libri-light tools define it.

    speechsq abx --items test.item --features units/test/z_q --frame-shift 0.02 \\
                 [--distance cosine] [--mode within|across|all] [--context within|any|all] \\
                 [--device cpu|cuda|auto] [--allow-missing] [--out result.json]

Definition (Schatz et al. 2013; the libri-light ``eval_ABX`` / ``zrc_abx2`` tools, whose
conventions are reproduced so that scores agree with theirs):

* cells, subsampling and aggregation: :mod:`speechsq.eval.abx_cells` (a cell is a pair of
  phones of one speaker in one context; errors are averaged over contexts and X speakers
  per (speaker, a, b), then over speakers per (a, b), then over phone pairs);
* a cell's score is the fraction of (X, A, B) triplets with ``d(X, A) < d(X, B)``, ties
  counting one half; its error is one minus that;
* ``d`` is the path-normalised DTW of frame distances (:mod:`speechsq.eval.dtw`,
  :mod:`speechsq.eval.abx_distance`) or, for discrete units, a normalised edit distance;
* inputs and their checks: :mod:`speechsq.eval.abx_data`.

Scores are reported in percent. Two backends compute the same numbers: ``numba``
(compiled CPU kernels, :mod:`speechsq.eval.abx_numba`) and ``torch`` (batched tensors on
any device, :mod:`speechsq.eval.abx_torch`); ``--device cuda`` uses the second on the GPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from speechsq.eval.abx_cells import CONTEXT_MODES, SPEAKER_MODES, Cells, aggregate, enumerate_cells
from speechsq.eval.abx_data import ABXDataset, ABXInputError, ItemTable, build_dataset, open_features, read_item_file
from speechsq.eval.abx_distance import DISTANCE_ALIASES, DISTANCES, SequenceDistance, distance_choices, get_distance
from speechsq.errors import SpeechsqError
from speechsq.registry import Registry

log = logging.getLogger(__name__)

REFERENCE_SEED = 3459  # the reference tools' default seed
PROGRESS_MIN_ALIGNMENTS = 2_000_000  # progress=None shows a bar (on a terminal) from this much work

__all__ = [
    "ABXResult", "BACKENDS", "CONTEXT_MODES", "DISTANCES", "DISTANCE_ALIASES", "REFERENCE_SEED", "SPEAKER_MODES",
    "abx_from_dataset", "compute_abx", "get_distance", "main",
]


# --------------------------------------------------------------------------- backends

# (cells, dataset, distance, device, progress) -> error rate (0..1) of every cell
ScoreFn = Callable[[Cells, ABXDataset, SequenceDistance, str, Callable[[int], None] | None], np.ndarray]
BACKENDS: Registry[ScoreFn] = Registry("ABX backend")


@BACKENDS.register("numba")
def _score_numba(cells, dataset, distance, device, progress):
    from speechsq.eval.abx_numba import score_cells_numba

    if device != "cpu":
        raise SpeechsqError(f"the numba ABX backend runs on the CPU only, not {device!r}; use the torch backend")
    return score_cells_numba(cells, dataset, distance, progress)


@BACKENDS.register("torch")
def _score_torch(cells, dataset, distance, device, progress):
    from speechsq.eval.abx_torch import score_cells_torch

    return score_cells_torch(cells, dataset, distance, device, progress)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device == "cpu":
        return device  # without importing torch: the CPU backend does not need it
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpeechsqError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise SpeechsqError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)")
    return device


def default_backend(device: str) -> str:
    """The CPU runs the compiled kernels, a GPU the torch ones."""
    return "numba" if device == "cpu" else "torch"


class _Progress:
    """A tqdm bar over alignments for one condition (shown per ``enabled``, see compute_abx)."""

    def __init__(self, key: str, total: int, enabled: bool | None):
        self.bar = None
        if enabled or (enabled is None and total >= PROGRESS_MIN_ALIGNMENTS):
            from tqdm import tqdm

            # disable=None: tqdm itself stays quiet when stderr is not a terminal (logs, CI)
            self.bar = tqdm(total=total, desc=f"ABX {key}", unit=" alignments", unit_scale=True,
                            disable=None if enabled is None else False, leave=False)

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- API


@dataclass
class ABXResult:
    """Error rates in percent per condition ``"<speaker mode>-<context mode>"``.

    ``scores[key]`` is None only when the condition has no cell (e.g. within speaker with
    one item per phone and speaker); ``inputs`` counts what was used and skipped
    (:class:`speechsq.eval.abx_data.ABXInputReport`).
    """

    scores: dict[str, float | None]
    n_cells: dict[str, int]
    inputs: dict
    settings: dict
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "scores": self.scores,
            "n_cells": self.n_cells,
            "inputs": self.inputs,
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
        }

    def table(self) -> str:
        lines = ["ABX error rate (%)", f"{'speaker':<9}{'context':<9}{'error':>8}{'cells':>10}"]
        for key, value in self.scores.items():
            speaker, context = key.split("-")
            shown = "n/a" if value is None else f"{value:.2f}"
            lines.append(f"{speaker:<9}{context:<9}{shown:>8}{self.n_cells.get(key, 0):>10}")
        return "\n".join(lines)


def abx_from_dataset(
    dataset: ABXDataset,
    distance: str = "cosine",
    speaker_modes: tuple[str, ...] = SPEAKER_MODES,
    context_modes: tuple[str, ...] = CONTEXT_MODES,
    max_size_group: int | None = 10,
    max_x_across: int | None = 5,
    seed: int = REFERENCE_SEED,
    device: str = "cpu",
    backend: str | None = None,
    progress: bool | None = None,
) -> ABXResult:
    """ABX on an already built dataset (see :func:`compute_abx`)."""
    started = time.perf_counter()
    spec = get_distance(distance)
    device = resolve_device(device)
    backend = backend or default_backend(device)
    score = BACKENDS.get(backend)
    scores: dict[str, float | None] = {}
    n_cells: dict[str, int] = {}
    n_alignments = 0
    for context_mode in context_modes:
        for speaker_mode in speaker_modes:
            key = f"{speaker_mode}-{context_mode}"
            condition_started = time.perf_counter()
            cells = enumerate_cells(dataset, speaker_mode, context_mode, max_size_group, max_x_across, seed)
            work = int(cells.n_alignments().sum())
            bar = _Progress(key, work, progress)
            try:
                errors = score(cells, dataset, spec, device, bar)
            finally:
                bar.close()
            value = aggregate(errors, cells)
            scores[key] = None if value is None else 100.0 * value
            n_cells[key] = len(cells)
            n_alignments += work
            if value is None:
                log.warning("ABX %s: no cell to score (too few items per phone and speaker)", key)
            else:
                log.info("ABX %s: %.4f %% (%d cells, %d alignments, %.1f s)", key, scores[key], len(cells), work,
                         time.perf_counter() - condition_started)
    dataset.report.log_summary()
    return ABXResult(
        scores=scores,
        n_cells=n_cells,
        inputs=dataset.report.to_dict(),
        settings={
            "distance": spec.name,
            "max_size_group": max_size_group,
            "max_x_across": max_x_across,
            "seed": seed,
            "device": device,
            "backend": backend,
            "n_alignments": n_alignments,
        },
        seconds=time.perf_counter() - started,
    )


def compute_abx(
    items: str | Path | ItemTable,
    features: str | Path | Mapping[str, np.ndarray],
    frame_shift: float = 0.01,
    frame_offset: float = 0.0,
    distance: str = "cosine",
    speaker_modes: tuple[str, ...] = SPEAKER_MODES,
    context_modes: tuple[str, ...] = CONTEXT_MODES,
    max_size_group: int | None = 10,
    max_x_across: int | None = 5,
    seed: int = REFERENCE_SEED,
    extension: str = ".npy",
    normalize: bool = True,
    dedup_units: bool = False,
    allow_missing: bool = False,
    device: str = "cpu",
    backend: str | None = None,
    progress: bool | None = None,
) -> ABXResult:
    """ABX error rates of features on an item file.

    features: a directory (one ``<file>.npy``/``.txt`` per file, or a ``compute-feats``
        directory with ``feats.scp``; its completion marker, if any, must be complete and
        match) or a mapping ``{file: array}``.
    ``max_size_group=None`` / ``max_x_across=None`` switch subsampling off.
    ``distance``: cosine (angular), euclidean, kl, kl_symmetric, or edit (discrete units).
    allow_missing: score the items whose file has features and count the rest, instead of
        refusing an item file the features do not cover.
    device: ``cpu``, ``cuda[:N]`` or ``auto``; backend: ``numba`` or ``torch`` (default: numba
        on the CPU, torch on a GPU).
    progress: a progress bar per condition (None: on a terminal, for long runs only).
    """
    spec = get_distance(distance)
    table = items if isinstance(items, ItemTable) else read_item_file(items)
    dataset = build_dataset(
        table,
        open_features(features, extension),
        frame_shift=frame_shift,
        frame_offset=frame_offset,
        discrete=spec.discrete,
        normalize=normalize and not spec.discrete,
        require_nonnegative=spec.requires_nonnegative,
        dedup_units=dedup_units,
        allow_missing=allow_missing,
    )
    result = abx_from_dataset(dataset, spec.name, speaker_modes, context_modes, max_size_group, max_x_across, seed,
                              device=device, backend=backend, progress=progress)
    result.settings.update({"frame_shift": frame_shift, "frame_offset": frame_offset, "normalize": normalize,
                            "dedup_units": dedup_units, "allow_missing": allow_missing})
    return result


# --------------------------------------------------------------------------- CLI


def _modes(value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    return allowed if value == "all" else (value,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechsq abx",
        description="ABX error rate (%) of per-file features or units on a libri-light item file "
        "(the numbers of zerospeech-libriabx2, including its seeded subsampling).",
    )
    parser.add_argument("--items", required=True, help="item file (header '#file onset offset #phone prev-phone next-phone speaker')")
    parser.add_argument("--features", required=True,
                        help="directory with one <file>.npy / .txt per file of the item file, or a compute-feats directory (feats.scp)")
    parser.add_argument("--extension", default=".npy", choices=[".npy", ".txt"], help="feature file extension")
    parser.add_argument("--frame-shift", type=float, default=0.01, help="seconds between frames (default 0.01; units of speechsq extract: 0.02)")
    parser.add_argument("--frame-offset", type=float, default=0.0, help="time of the first frame's centre (s)")
    parser.add_argument("--distance", default="cosine", choices=distance_choices(),
                        help="frame distance for DTW, or 'edit' for discrete units (one integer per frame)")
    parser.add_argument("--mode", default="all", choices=["within", "across", "all"], help="speaker mode")
    parser.add_argument("--context", default="all", choices=["within", "any", "all"], help="context mode")
    parser.add_argument("--max-size-group", type=int, default=10, help="subsample groups above this size (reference default 10)")
    parser.add_argument("--max-x-across", type=int, default=5, help="X speakers drawn per A group (reference default 5)")
    parser.add_argument("--no-subsample", action="store_true", help="use every item and every X speaker")
    parser.add_argument("--seed", type=int, default=REFERENCE_SEED, help="seed of the subsampling draws")
    parser.add_argument("--no-normalize", action="store_true", help="do not L2-normalise frames (the reference always does)")
    parser.add_argument("--dedup-units", action="store_true", help="collapse repeated units inside an item (edit distance)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score the items whose file has features and count the others (default: refuse partial features)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (cuda when available); default cpu")
    parser.add_argument("--backend", choices=BACKENDS.names(), help="numba (CPU) or torch (any device); default: per device")
    parser.add_argument("--threads", default="auto", help="CPU threads (default: SPEECHSQ_THREADS / OMP_NUM_THREADS, else all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", help="write the result as JSON here")
    return parser


def configure_cpu_threads(requested: str | int = "auto", torch_too: bool = False) -> int:
    """numba's (and, with ``torch_too``, torch's) thread pool per the speechsq thread policy
    (:mod:`speechsq.threads`). The CPU backend never imports torch (3 s, 550 MiB here)."""
    import numba

    from speechsq.threads import configure_threads, resolve_threads

    n = configure_threads(requested) if torch_too else resolve_threads(requested)
    os.environ["OMP_NUM_THREADS"] = str(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return n


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    threads = configure_cpu_threads(args.threads, torch_too=args.device != "cpu" or args.backend == "torch")
    log.info("ABX on %d CPU thread(s)", threads)
    result = compute_abx(
        args.items,
        args.features,
        frame_shift=args.frame_shift,
        frame_offset=args.frame_offset,
        distance=args.distance,
        speaker_modes=_modes(args.mode, SPEAKER_MODES),
        context_modes=_modes(args.context, CONTEXT_MODES),
        max_size_group=None if args.no_subsample else args.max_size_group,
        max_x_across=None if args.no_subsample else args.max_x_across,
        seed=args.seed,
        extension=args.extension,
        normalize=not args.no_normalize,
        dedup_units=args.dedup_units,
        allow_missing=args.allow_missing,
        device=args.device,
        backend=args.backend,
        progress=False if args.no_progress else None,
    )
    if all(value is None for value in result.scores.values()):
        raise ABXInputError(
            f"no ABX cell in any of the conditions {', '.join(result.scores)}: {result.inputs['n_items_used']} usable "
            "items, but no speaker has two phones in one context (and, within speaker, two items of a phone)"
        )
    print(result.table())
    if args.out:
        from speechsq.completion import atomic_write_json

        atomic_write_json(args.out, result.to_dict())
        log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
