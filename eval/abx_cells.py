"""ABX cells: which (A, B, X) item groups are compared, in the reference's order and with
its seeded draws, and how cell errors are averaged into one score.

A *cell* is a pair of phones (a, b) of one speaker S in one context (``within`` context;
``any`` context ignores it): A = items of phone a, B = items of phone b, both by S.
``within`` speaker: X also comes from A (each X in A is compared with every other A).
``across`` speaker: X = items of phone a in the same context by another speaker; each such
speaker gives its own cell.

Subsampling (the reference's defaults ``max_size_group=10``, ``max_x_across=5``): a group
with more items is replaced by a random sample of that size, drawn anew for every cell, and
at most ``max_x_across`` X speakers are drawn per (A speaker, a). The draws use Python's
``random`` seeded with ``seed`` at the start of each condition, in the reference's iteration
order, so that equal inputs draw equal samples.
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass

import numpy as np

from speechsq.eval.abx_data import ABXDataset
from speechsq.eval.abx_random import sample_indices, state_of

SPEAKER_MODES = ("within", "across")
CONTEXT_MODES = ("within", "any")


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

    def sizes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item counts (n_a, n_b, n_x) of every cell."""
        return np.diff(self.a_ptr), np.diff(self.b_ptr), np.diff(self.x_ptr)

    def n_alignments(self) -> np.ndarray:
        """Alignments (DTW or edit distance) each cell needs: X-A (each unordered A-A pair
        once within speaker) plus X-B."""
        n_a, n_b, n_x = self.sizes()
        xa = n_a * (n_a - 1) // 2 if self.symmetric else n_x * n_a
        return xa + n_x * n_b

    def chunks(self, alignments_per_chunk: int) -> list[np.ndarray]:
        """Consecutive cell index ranges of about ``alignments_per_chunk`` alignments each."""
        if not len(self):
            return []
        cumulative = np.cumsum(self.n_alignments())
        cuts = np.searchsorted(cumulative, np.arange(alignments_per_chunk, int(cumulative[-1]), alignments_per_chunk), side="right")
        bounds = [0] + sorted(set(int(c) for c in cuts if 0 < c < len(self))) + [len(self)]
        return [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def n_comparisons(self) -> np.ndarray:
        """(X, A, B) triplets of every cell: the denominator of its score."""
        n_a, n_b, n_x = self.sizes()
        positives = n_a * (n_a - 1) if self.symmetric else n_x * n_a
        return positives * n_b


def _runs(dataset: ABXDataset, context_mode: str) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """Items sorted by (context,) speaker, phone (stable), cut into outer groups of phone runs.

    Returns ``order`` (dataset item index per sorted position) and the groups, each a list of
    ``(start, end)`` runs of one phone (positions in ``order``).
    """
    keys = [dataset.speaker, dataset.phone] if context_mode == "any" else [dataset.context, dataset.speaker, dataset.phone]
    order = np.lexsort([np.arange(len(dataset))] + keys[::-1])
    sorted_keys = np.stack([k[order] for k in keys], axis=1)
    change = np.flatnonzero(np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)) + 1
    starts = np.concatenate([[0], change]).tolist()
    ends = np.concatenate([change, [len(order)]]).tolist()
    outer_change = np.any(sorted_keys[1:, :-1] != sorted_keys[:-1, :-1], axis=1) if len(order) else np.zeros(0, bool)
    groups: list[list[tuple[int, int]]] = []
    for start, end in zip(starts, ends):
        if start == 0 or outer_change[start - 1]:
            groups.append([])
        groups[-1].append((start, end))
    return order, groups


class _Sampler:
    """``random.Random(seed).sample`` draws, made in compiled code (:mod:`.abx_random`)."""

    def __init__(self, seed: int):
        self.state = state_of(random.Random(seed))
        self.out = np.empty(64, np.int64)

    def sample(self, n: int, k: int) -> list[int]:
        """Indices drawn as ``random.Random.sample(range(n), k)`` would draw them."""
        if k > len(self.out):
            self.out = np.empty(k, np.int64)
        sample_indices(self.state, n, k, self.out)
        return self.out[:k].tolist()


class _CellBuilder:
    def __init__(self, order: np.ndarray, max_size_group: int | None, sampler: _Sampler):
        self.order = order
        self.max_size_group = max_size_group
        self.sampler = sampler
        self.lists = {name: array("q") for name in ("a", "b", "x")}
        self.counts = {name: array("q") for name in ("a", "b", "x")}
        self.ids = {name: array("q") for name in ("speaker", "phone_a", "phone_b", "context", "speaker_x")}

    def take(self, run: tuple[int, int]):
        start, end = run
        if self.max_size_group is not None and end - start > self.max_size_group:
            return [start + i for i in self.sampler.sample(end - start, self.max_size_group)]
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
    order, groups = _runs(dataset, context_mode)
    builder = _CellBuilder(order, max_size_group, _Sampler(seed))
    phone_of = dataset.phone[order].tolist()
    speaker_of = dataset.speaker[order].tolist()
    context_of = dataset.context[order].tolist() if context_mode == "within" else [-1] * len(order)

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
                            "speaker": speaker_of[head],
                            "phone_a": phone_of[head],
                            "phone_b": phone_of[run_b[0]],
                            "context": context_of[head],
                            "speaker_x": speaker_of[head],
                        },
                    )
        return builder.build(True)

    # across speakers: for (context, phone) the runs of every speaker, in sorted order
    speakers_of_phone: dict[tuple, dict[int, tuple[int, int]]] = {}
    for runs in groups:
        for run in runs:
            head = run[0]
            speakers_of_phone.setdefault((context_of[head], phone_of[head]), {})[speaker_of[head]] = run
    for runs in groups:
        if len(runs) == 1:
            continue
        for ia, run_a in enumerate(runs):
            head = run_a[0]
            speaker = speaker_of[head]
            key = (context_of[head], phone_of[head])
            others = [run for s, run in speakers_of_phone[key].items() if s != speaker]
            if max_x_across is not None and len(others) > max_x_across:
                others = [others[i] for i in builder.sampler.sample(len(others), max_x_across)]
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
                            "phone_b": phone_of[run_b[0]],
                            "context": key[0],
                            "speaker_x": speaker_of[run_x[0]],
                        },
                    )
    return builder.build(False)


def aggregate(errors: np.ndarray, cells: Cells) -> float | None:
    """Mean over cells per (speaker, a, b) (contexts and X speakers), then over speakers per
    (a, b), then over phone pairs; None when there is no cell."""
    if not len(errors):
        return None
    level1, inverse = np.unique(np.stack([cells.speaker, cells.phone_a, cells.phone_b], 1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    per_speaker = np.bincount(inverse, weights=errors) / np.bincount(inverse)
    _, inverse2 = np.unique(level1[:, 1:], axis=0, return_inverse=True)
    inverse2 = inverse2.ravel()
    per_pair = np.bincount(inverse2, weights=per_speaker) / np.bincount(inverse2)
    return float(per_pair.mean())
