"""Minimal-pair ABX discriminability, as the ZeroSpeech / libri-light tools define it.

    speechsq abx --items test.item --features units/test --frame-shift 0.01 \\
                 [--distance cosine] [--mode within|across|all] [--context within|any|all] \\
                 [--out result.json]

Definition (Schatz et al. 2013; the libri-light ``eval_ABX`` / ``zrc_abx2`` tools, whose
conventions are reproduced here so that scores agree with theirs):

* Items are grouped by (context, speaker, phone) (``within`` context) or (speaker,
  phone) (``any`` context). A *cell* is a pair of phones (a, b) of one speaker S in one
  context: A = items of phone a, B = items of phone b, both by S.
* ``within`` speaker: X also comes from A (every X in A is compared with every other A,
  so an A group needs at least 2 items). ``across`` speaker: X = items of phone a in the
  same context by another speaker (each such speaker gives its own cell).
* The cell's score is the fraction of triplets with ``d(X, A) < d(X, B)``, ties counting
  one half; the error is one minus that. ``d`` is the path-normalised DTW of frame
  distances (:mod:`speechsq.eval.dtw`) or, for discrete units, a normalised edit distance.
* Aggregation order: errors are averaged over contexts (and X speakers) for each
  (speaker, a, b), then over speakers for each (a, b), then over phone pairs.
* Subsampling (on by default, as in the reference): a group with more than
  ``max_size_group`` items is replaced by a random sample of that size, drawn anew for
  every cell, and at most ``max_x_across`` X speakers are drawn per (A speaker, a).
  The draws use Python's ``random`` seeded with ``seed`` at the start of each speaker
  mode, in the reference's iteration order, so that equal inputs draw equal samples.
  ``--no-subsample`` uses every item and speaker.

Implementation: the cells are enumerated first (cheap), the distinct (row item, column
item) pairs they need are collected and aligned in large shape-homogeneous batches
(vectorised DTW, frame distances as batched matrix products), then every cell is scored
with array operations. Items with no frames, missing files and the like are counted in
``inputs`` of the result, never silently dropped (see :mod:`speechsq.eval.abx_data`).
Scores are reported in percent.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from speechsq.eval.abx_data import (
    ABXDataset,
    ItemTable,
    build_dataset,
    find_feature_files,
    read_item_file,
)
from speechsq.eval.dtw import dtw_batch, edit_distance_batch
from speechsq.registry import Registry

log = logging.getLogger(__name__)

SPEAKER_MODES = ("within", "across")
CONTEXT_MODES = ("within", "any")
REFERENCE_SEED = 3459  # the reference tools' default seed
_PAIR_BUDGET = 1 << 22  # frame-distance entries (pairs x n x m x dim) per batch


# --------------------------------------------------------------------------- distances

FrameDistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SequenceDistance:
    """How two items are compared.

    frame_distance: ``(B, n, D), (B, m, D) -> (B, n, m)`` float32, aligned with DTW;
        None for discrete units, which use the normalised edit distance.
    requires_nonnegative: items with negative values are skipped (KL divergences).
    cost_per_dim: whether the batch budget must account for the feature dimension
        (broadcast implementations) or not (matrix products).
    float64_frames: hand the frame distance float64 frames (converted once, not per batch).
    """

    name: str
    frame_distance: FrameDistanceFn | None
    requires_nonnegative: bool = False
    cost_per_dim: bool = True
    float64_frames: bool = False

    @property
    def discrete(self) -> bool:
        return self.frame_distance is None


DISTANCES: Registry[SequenceDistance] = Registry("ABX distance")


def _register(distance: SequenceDistance) -> None:
    DISTANCES.register(distance.name)(distance)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Angle between (already normalised) frames, divided by pi. The dot products are taken
    # in float64 and rounded to float32: identical frames then get identical distances
    # wherever they sit in the batch, so exact ties stay ties, as in the reference.
    dot = torch.bmm(a.double(), b.double().transpose(1, 2)).float()
    return torch.clamp(dot, -1, 1).acos() / math.pi


def _euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    diff = a[:, :, None, :] - b[:, None, :, :]
    return torch.sqrt((diff**2).sum(dim=-1))


def _kl(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    p = a[:, :, None, :]
    ratio = (p + eps) / (b[:, None, :, :] + eps)
    return (p * ratio.log()).sum(dim=-1)


def _kl_symmetric(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    p, q = a[:, :, None, :], b[:, None, :, :]
    forward = p * ((p + eps) / (q + eps)).log()
    backward = q * ((q + eps) / (p + eps)).log()
    return (0.5 * forward + 0.5 * backward).sum(dim=-1)


_register(SequenceDistance("cosine", _cosine, cost_per_dim=False, float64_frames=True))
_register(SequenceDistance("euclidean", _euclidean))
_register(SequenceDistance("kl", _kl, requires_nonnegative=True))
_register(SequenceDistance("kl_symmetric", _kl_symmetric, requires_nonnegative=True))
_register(SequenceDistance("edit", None))
DISTANCE_ALIASES = {"angular": "cosine", "euclidian": "euclidean", "symmetric_kl": "kl_symmetric", "levenshtein": "edit"}


def get_distance(name: str) -> SequenceDistance:
    return DISTANCES.get(DISTANCE_ALIASES.get(name, name))


def _gather(frames: np.ndarray, dataset: ABXDataset, items: np.ndarray, length: int) -> np.ndarray:
    """(len(items), length, dim) frames of items that all have ``length`` frames."""
    return frames[dataset.start[items][:, None] + np.arange(length)]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for int64 keys via one sort (much faster than numpy 2's hash-based unique here)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def pair_distances(dataset: ABXDataset, rows: np.ndarray, cols: np.ndarray, distance: SequenceDistance) -> np.ndarray:
    """Sequence distance of every (row item, column item) pair, float32.

    Pairs are bucketed by (row length, column length) and aligned a batch at a time.
    """
    out = np.empty(len(rows), dtype=np.float32)
    if not len(rows):
        return out
    n_all, m_all = dataset.length[rows], dataset.length[cols]
    max_m = int(m_all.max()) + 1
    shape_key = n_all * max_m + m_all
    order = np.argsort(shape_key, kind="stable")
    bounds = np.flatnonzero(np.diff(shape_key[order])) + 1
    dim = dataset.frames.shape[1] if distance.cost_per_dim else 1
    frames = dataset.frames.astype(np.float64) if distance.float64_frames else dataset.frames
    with torch.no_grad():
        for bucket in np.split(order, bounds):
            n, m = int(n_all[bucket[0]]), int(m_all[bucket[0]])
            per_batch = max(1, _PAIR_BUDGET // (n * m * dim))
            for lo in range(0, len(bucket), per_batch):
                sel = bucket[lo : lo + per_batch]
                a = _gather(frames, dataset, rows[sel], n)
                b = _gather(frames, dataset, cols[sel], m)
                if distance.discrete:
                    out[sel] = edit_distance_batch(a[..., 0], b[..., 0])
                else:
                    dist = distance.frame_distance(torch.from_numpy(a), torch.from_numpy(b))
                    out[sel] = dtw_batch(dist.numpy())
    return out


# --------------------------------------------------------------------------- cells


@dataclass
class Cells:
    """Every (A, B, X) cell of one condition, as flat position lists.

    Item lists of cell ``k``: ``a[a_ptr[k]:a_ptr[k+1]]`` (dataset item indices), same for
    ``b`` and ``x``. ``symmetric`` (within speaker): X is A itself.
    ``speaker, phone_a, phone_b, context, speaker_x`` identify each cell.
    """

    symmetric: bool
    a: np.ndarray
    a_ptr: np.ndarray
    b: np.ndarray
    b_ptr: np.ndarray
    x: np.ndarray
    x_ptr: np.ndarray
    speaker: np.ndarray
    phone_a: np.ndarray
    phone_b: np.ndarray
    context: np.ndarray
    speaker_x: np.ndarray

    def __len__(self) -> int:
        return len(self.speaker)


def _runs(dataset: ABXDataset, context_mode: str) -> tuple[np.ndarray, list[list[tuple[int, int]]], list[tuple]]:
    """Items sorted by (context,) speaker, phone (stable), cut into outer groups of phone runs.

    Returns ``order`` (dataset item index per sorted position), the groups (each a list of
    ``(start, end)`` runs of one phone, positions in ``order``) and each group's key.
    """
    keys = [dataset.speaker, dataset.phone] if context_mode == "any" else [dataset.context, dataset.speaker, dataset.phone]
    order = np.lexsort([np.arange(len(dataset))] + keys[::-1])
    sorted_keys = np.stack([k[order] for k in keys], axis=1)
    change = np.flatnonzero(np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)) + 1
    starts = np.concatenate([[0], change]).tolist()
    ends = np.concatenate([change, [len(order)]]).tolist()
    groups: list[list[tuple[int, int]]] = []
    group_keys: list[tuple] = []
    previous = None
    for start, end in zip(starts, ends):
        outer = tuple(sorted_keys[start, :-1].tolist())
        if outer != previous:
            groups.append([])
            group_keys.append(outer)
            previous = outer
        groups[-1].append((start, end))
    return order, groups, group_keys


class _CellBuilder:
    def __init__(self, order: np.ndarray, max_size_group: int | None, rng: random.Random):
        self.order = order
        self.max_size_group = max_size_group
        self.rng = rng
        self.lists = {name: array("q") for name in ("a", "b", "x")}
        self.counts = {name: array("q") for name in ("a", "b", "x")}
        self.ids = {name: array("q") for name in ("speaker", "phone_a", "phone_b", "context", "speaker_x")}

    def take(self, run: tuple[int, int]):
        start, end = run
        if self.max_size_group is not None and end - start > self.max_size_group:
            return self.rng.sample(range(start, end), k=self.max_size_group)
        return range(start, end)

    def add(self, positions: dict, ids: dict) -> None:
        for name, pos in positions.items():
            self.lists[name].extend(pos)
            self.counts[name].append(len(pos))
        for name, value in ids.items():
            self.ids[name].append(value)

    def build(self, symmetric: bool) -> Cells:
        def flat(name):
            items = self.order[np.frombuffer(self.lists[name], dtype=np.int64)] if len(self.lists[name]) else np.zeros(0, np.int64)
            ptr = np.concatenate([[0], np.cumsum(np.frombuffer(self.counts[name], dtype=np.int64))]).astype(np.int64)
            return items, ptr

        a, a_ptr = flat("a")
        b, b_ptr = flat("b")
        x, x_ptr = (a, a_ptr) if symmetric else flat("x")
        ids = {k: np.frombuffer(v, dtype=np.int64).copy() if len(v) else np.zeros(0, np.int64) for k, v in self.ids.items()}
        return Cells(symmetric, a, a_ptr, b, b_ptr, x, x_ptr, **ids)


def enumerate_cells(
    dataset: ABXDataset,
    speaker_mode: str,
    context_mode: str,
    max_size_group: int | None,
    max_x_across: int | None,
    seed: int,
) -> Cells:
    """All cells of one condition, in the reference's order and with its random draws."""
    if speaker_mode not in SPEAKER_MODES or context_mode not in CONTEXT_MODES:
        raise ValueError(f"unknown ABX condition speaker={speaker_mode!r} context={context_mode!r}")
    order, groups, group_keys = _runs(dataset, context_mode)
    builder = _CellBuilder(order, max_size_group, random.Random(seed))
    phone_of = dataset.phone[order]
    speaker_of = dataset.speaker[order]
    context_of = dataset.context[order] if context_mode == "within" else np.full(len(order), -1)

    if speaker_mode == "within":
        for runs in groups:
            if len(runs) == 1:
                continue
            for ia, run_a in enumerate(runs):
                if run_a[1] - run_a[0] == 1:
                    continue  # X is drawn from A: one item leaves nothing to compare with
                head = run_a[0]
                for ib, run_b in enumerate(runs):
                    if ib == ia:
                        continue
                    b = builder.take(run_b)  # the reference draws B before A
                    a = builder.take(run_a)
                    builder.add(
                        {"a": a, "b": b},
                        {
                            "speaker": int(speaker_of[head]),
                            "phone_a": int(phone_of[head]),
                            "phone_b": int(phone_of[run_b[0]]),
                            "context": int(context_of[head]),
                            "speaker_x": int(speaker_of[head]),
                        },
                    )
        return builder.build(True)

    # across speakers: for (context, phone) the runs of every speaker, in sorted order
    speakers_of_phone: dict[tuple, dict[int, tuple[int, int]]] = {}
    for runs in groups:
        for run in runs:
            head = run[0]
            key = (int(context_of[head]), int(phone_of[head]))
            speakers_of_phone.setdefault(key, {})[int(speaker_of[head])] = run
    for runs in groups:
        if len(runs) == 1:
            continue
        for ia, run_a in enumerate(runs):
            head = run_a[0]
            speaker = int(speaker_of[head])
            key = (int(context_of[head]), int(phone_of[head]))
            others = [run for s, run in speakers_of_phone[key].items() if s != speaker]
            if max_x_across is not None and len(others) > max_x_across:
                others = builder.rng.sample(others, k=max_x_across)
            for run_x in others:
                for ib, run_b in enumerate(runs):
                    if ib == ia:
                        continue
                    a = builder.take(run_a)
                    b = builder.take(run_b)
                    x = builder.take(run_x)
                    builder.add(
                        {"a": a, "b": b, "x": x},
                        {
                            "speaker": speaker,
                            "phone_a": key[1],
                            "phone_b": int(phone_of[run_b[0]]),
                            "context": key[0],
                            "speaker_x": int(speaker_of[run_x[0]]),
                        },
                    )
    return builder.build(False)


# --------------------------------------------------------------------------- pairs and scoring


def _ragged_product(ptr_x: np.ndarray, ptr_y: np.ndarray, cells: np.ndarray):
    """For the given cells, every (cell, i, j) with i < len_x(cell), j < len_y(cell), x-major."""
    len_x = (ptr_x[cells + 1] - ptr_x[cells]).astype(np.int64)
    len_y = (ptr_y[cells + 1] - ptr_y[cells]).astype(np.int64)
    counts = len_x * len_y
    which = np.repeat(np.arange(len(cells)), counts)
    local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return which, local // len_y[which], local % len_y[which]


def _cell_pairs(cells: Cells, chunk: np.ndarray, n_items: int):
    """Pair keys (row * n_items + col) of the X-A and X-B comparisons of some cells.

    Returns (xa_keys, xa_row_id, xb_keys, xb_row_id, row_cell) where row ids number the
    (cell, x) rows of the chunk; X-A pairs with X == A (within speaker) are left out.
    """
    # rows = (cell, x position)
    n_x = cells.x_ptr[chunk + 1] - cells.x_ptr[chunk]
    row_base = np.cumsum(n_x) - n_x
    row_cell = np.repeat(np.arange(len(chunk)), n_x)

    which, ix, ia = _ragged_product(cells.x_ptr, cells.a_ptr, chunk)
    if cells.symmetric:
        keep = ix != ia
        which, ix, ia = which[keep], ix[keep], ia[keep]
        # the reference aligns the pair once, with the earlier group member as row
        lo, hi = np.minimum(ix, ia), np.maximum(ix, ia)
        base = cells.a_ptr[chunk][which]
        rows, cols = cells.a[base + lo], cells.a[base + hi]
    else:
        rows = cells.x[cells.x_ptr[chunk][which] + ix]
        cols = cells.a[cells.a_ptr[chunk][which] + ia]
    xa_keys = rows * n_items + cols
    xa_row = row_base[which] + ix

    which, ix, ib = _ragged_product(cells.x_ptr, cells.b_ptr, chunk)
    rows = cells.x[cells.x_ptr[chunk][which] + ix]
    cols = cells.b[cells.b_ptr[chunk][which] + ib]
    return xa_keys, xa_row, rows * n_items + cols, row_base[which] + ix, row_cell


def _chunks(cells: Cells, budget: int = 1 << 21) -> list[np.ndarray]:
    """Cell index chunks with about ``budget`` comparisons pairs each."""
    n_x = np.diff(cells.x_ptr)
    work = n_x * (np.diff(cells.a_ptr) + np.diff(cells.b_ptr))
    cum = np.cumsum(work)
    cut = np.searchsorted(cum, np.arange(budget, int(cum[-1]) + budget, budget)) + 1 if len(cum) else []
    bounds = sorted(set(int(c) for c in cut if 0 < c < len(cells)))
    return np.split(np.arange(len(cells)), bounds)


def _row_correct(xa: np.ndarray, xa_row: np.ndarray, xb: np.ndarray, xb_row: np.ndarray, n_rows: int):
    """For each row, sum over (a, b) of [d(x,a) < d(x,b)] + 0.5 [d(x,a) == d(x,b)]."""
    # values of a row are contiguous (x-major enumeration); bucket rows by their sizes
    na = np.bincount(xa_row, minlength=n_rows)
    nb = np.bincount(xb_row, minlength=n_rows)
    a_start = np.cumsum(na) - na
    b_start = np.cumsum(nb) - nb
    correct = np.zeros(n_rows)
    size_key = na * (int(nb.max(initial=0)) + 1) + nb
    order = np.argsort(size_key, kind="stable")
    bounds = np.flatnonzero(np.diff(size_key[order])) + 1
    for bucket in np.split(order, bounds):
        if not len(bucket):
            continue
        ka, kb = int(na[bucket[0]]), int(nb[bucket[0]])
        if ka == 0 or kb == 0:
            continue
        step = max(1, (1 << 23) // (ka * kb))
        for lo in range(0, len(bucket), step):
            rows = bucket[lo : lo + step]
            da = xa[a_start[rows][:, None] + np.arange(ka)][:, :, None]
            db = xb[b_start[rows][:, None] + np.arange(kb)][:, None, :]
            correct[rows] = (da < db).sum(axis=(1, 2)) + 0.5 * (da == db).sum(axis=(1, 2))
    return correct, na, nb


def score_cells(cells: Cells, dataset: ABXDataset, distance: SequenceDistance, cache: "PairCache") -> np.ndarray:
    """Error rate (0..1) of every cell."""
    errors = np.empty(len(cells))
    n_items = len(dataset)
    chunks = _chunks(cells) if len(cells) else []
    # pass 1: the distinct pairs needed
    needed = [sorted_unique(np.concatenate(_cell_pairs(cells, chunk, n_items)[0:3:2])) for chunk in chunks]
    if needed:
        cache.ensure(sorted_unique(np.concatenate(needed)), dataset, distance)
    # pass 2: score
    for chunk in chunks:
        xa_keys, xa_row, xb_keys, xb_row, row_cell = _cell_pairs(cells, chunk, n_items)
        correct, na, nb = _row_correct(cache.lookup(xa_keys), xa_row, cache.lookup(xb_keys), xb_row, len(row_cell))
        comparisons = np.bincount(row_cell, weights=na * nb, minlength=len(chunk))
        theta = np.bincount(row_cell, weights=correct, minlength=len(chunk)) / comparisons
        errors[chunk] = 1.0 - theta
    return errors


@dataclass
class PairCache:
    """Distances of (row item, column item) pairs, keyed ``row * n_items + col``, sorted."""

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def ensure(self, keys: np.ndarray, dataset: ABXDataset, distance: SequenceDistance) -> None:
        new = keys[~self.contains(keys)] if len(self.keys) else keys
        if len(new):
            n_items = len(dataset)
            values = pair_distances(dataset, new // n_items, new % n_items, distance)
            all_keys = np.concatenate([self.keys, new])
            order = np.argsort(all_keys, kind="stable")
            self.keys = all_keys[order]
            self.values = np.concatenate([self.values, values])[order]

    def contains(self, keys: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.keys, keys)]


def aggregate(errors: np.ndarray, cells: Cells) -> float | None:
    """Mean over cells per (speaker, a, b), then over speakers per (a, b), then over pairs."""
    if not len(errors):
        return None
    level1, inverse = np.unique(np.stack([cells.speaker, cells.phone_a, cells.phone_b], 1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    per_speaker = np.bincount(inverse, weights=errors) / np.bincount(inverse)
    pairs, inverse2 = np.unique(level1[:, 1:], axis=0, return_inverse=True)
    inverse2 = inverse2.ravel()
    per_pair = np.bincount(inverse2, weights=per_speaker) / np.bincount(inverse2)
    return float(per_pair.mean())


# --------------------------------------------------------------------------- API


@dataclass
class ABXResult:
    """Error rates in percent per condition ``"<speaker mode>-<context mode>"``."""

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
) -> ABXResult:
    """ABX on an already built dataset (see :func:`compute_abx`)."""
    started = time.perf_counter()
    spec = get_distance(distance)
    scores: dict[str, float | None] = {}
    n_cells: dict[str, int] = {}
    cache = PairCache()
    for context_mode in context_modes:
        for speaker_mode in speaker_modes:
            key = f"{speaker_mode}-{context_mode}"
            if len(dataset) == 0:
                scores[key], n_cells[key] = None, 0
                continue
            cells = enumerate_cells(dataset, speaker_mode, context_mode, max_size_group, max_x_across, seed)
            errors = score_cells(cells, dataset, spec, cache)
            value = aggregate(errors, cells)
            scores[key] = None if value is None else 100.0 * value
            n_cells[key] = len(cells)
            if value is None:
                log.warning("ABX %s: no cell to score (too few items per phone/speaker)", key)
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
            "n_distinct_pairs": int(len(cache.keys)),
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
) -> ABXResult:
    """ABX error rates of features (a directory of per-file arrays, or a dict) on an item file.

    ``max_size_group=None`` / ``max_x_across=None`` switch subsampling off.
    ``distance``: cosine (angular), euclidean, kl, kl_symmetric, or edit (discrete units).
    """
    spec = get_distance(distance)
    table = items if isinstance(items, ItemTable) else read_item_file(items)
    if isinstance(features, (str, Path)):
        features = find_feature_files(features, extension)
    dataset = build_dataset(
        table,
        features,
        frame_shift=frame_shift,
        frame_offset=frame_offset,
        discrete=spec.discrete,
        normalize=normalize and not spec.discrete,
        require_nonnegative=spec.requires_nonnegative,
        dedup_units=dedup_units,
    )
    result = abx_from_dataset(dataset, spec.name, speaker_modes, context_modes, max_size_group, max_x_across, seed)
    result.settings.update({"frame_shift": frame_shift, "frame_offset": frame_offset, "normalize": normalize, "dedup_units": dedup_units})
    return result


# --------------------------------------------------------------------------- CLI


def _modes(value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    return allowed if value == "all" else (value,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechsq abx",
        description="ABX error rate (%) of per-file features or units on a libri-light item file.",
    )
    parser.add_argument("--items", required=True, help="item file (#file onset offset #phone prev next speaker)")
    parser.add_argument("--features", required=True, help="directory with one <file>.npy / .txt per file")
    parser.add_argument("--extension", default=".npy", choices=[".npy", ".txt"], help="feature file extension")
    parser.add_argument("--frame-shift", type=float, default=0.01, help="seconds between frames (default 0.01)")
    parser.add_argument("--frame-offset", type=float, default=0.0, help="time of the first frame's centre (s)")
    parser.add_argument(
        "--distance",
        default="cosine",
        choices=sorted(set(DISTANCES.names()) | set(DISTANCE_ALIASES)),
        help="frame distance for DTW, or 'edit' for discrete units (one integer per frame)",
    )
    parser.add_argument("--mode", default="all", choices=["within", "across", "all"], help="speaker mode")
    parser.add_argument("--context", default="all", choices=["within", "any", "all"], help="context mode")
    parser.add_argument("--max-size-group", type=int, default=10, help="subsample groups above this size (reference default 10)")
    parser.add_argument("--max-x-across", type=int, default=5, help="X speakers drawn per A group (reference default 5)")
    parser.add_argument("--no-subsample", action="store_true", help="use every item and every X speaker")
    parser.add_argument("--seed", type=int, default=REFERENCE_SEED, help="seed of the subsampling draws")
    parser.add_argument("--no-normalize", action="store_true", help="do not L2-normalise frames (the reference always does)")
    parser.add_argument("--dedup-units", action="store_true", help="collapse repeated units inside an item (edit distance)")
    parser.add_argument("--out", help="write the result as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
    )
    print(result.table())
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
