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
from dataclasses import dataclass

import numpy as np
from numba import njit

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


@dataclass
class _Runs:
    """Items sorted by (context,) speaker, phone (stable), cut into runs of one phone, the runs
    grouped by their outer key ((context,) speaker). Positions index ``order``."""

    order: np.ndarray  # dataset item index per sorted position
    start: np.ndarray  # run r covers positions start[r]:end[r]
    end: np.ndarray
    group_ptr: np.ndarray  # runs of group g: group_ptr[g]:group_ptr[g+1]
    phone: np.ndarray  # per run
    speaker: np.ndarray
    context: np.ndarray  # -1 in the ``any`` context mode
    peers: np.ndarray  # runs of the same (context, phone), in group order, segment by segment
    peer_ptr: np.ndarray  # segment of run r: peers[peer_ptr[segment_of[r]] : peer_ptr[segment_of[r] + 1]]
    segment_of: np.ndarray


def _runs(dataset: ABXDataset, context_mode: str) -> _Runs:
    keys = [dataset.speaker, dataset.phone] if context_mode == "any" else [dataset.context, dataset.speaker, dataset.phone]
    order = np.lexsort([np.arange(len(dataset))] + keys[::-1])
    sorted_keys = np.stack([k[order] for k in keys], axis=1)
    change = np.flatnonzero(np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)) + 1
    start = np.concatenate([[0], change]).astype(np.int64)
    end = np.concatenate([change, [len(order)]]).astype(np.int64)
    outer = sorted_keys[start, :-1]
    new_group = np.concatenate([[True], np.any(outer[1:] != outer[:-1], axis=1)])
    group_ptr = np.concatenate([np.flatnonzero(new_group), [len(start)]]).astype(np.int64)
    phone = dataset.phone[order[start]]
    speaker = dataset.speaker[order[start]]
    context = dataset.context[order[start]] if context_mode == "within" else np.full(len(start), -1, np.int64)
    # runs of one (context, phone) in group order: a stable sort keeps the groups' order
    peers = np.lexsort([np.arange(len(start)), phone, context])
    key = np.stack([context[peers], phone[peers]], axis=1)
    boundary = np.concatenate([[True], np.any(key[1:] != key[:-1], axis=1)])
    peer_ptr = np.concatenate([np.flatnonzero(boundary), [len(peers)]]).astype(np.int64)
    segment_of = np.empty(len(start), np.int64)
    segment_of[peers] = np.cumsum(boundary) - 1
    return _Runs(order, start, end, group_ptr, phone, speaker, context, peers.astype(np.int64), peer_ptr, segment_of)


@njit(cache=True, nogil=True)
def _take(state, start, end, max_size, fill, out, at, scratch):
    """The items of one run (all, or ``max_size`` drawn as random.sample draws them), written
    to ``out[at:]`` when ``fill``; returns how many. Draws either way (see :func:`_walk`)."""
    size = end - start
    if max_size >= 0 and size > max_size:
        sample_indices(state, size, max_size, scratch)
        if fill:
            for t in range(max_size):
                out[at + t] = start + scratch[t]
        return max_size
    if fill:
        for t in range(size):
            out[at + t] = start + t
    return size


@njit(cache=True, nogil=True)
def _walk(within, start, end, group_ptr, phone, speaker, context, peers, peer_ptr, segment_of, max_size, max_x,
          state, fill, a, a_len, b, b_len, x, x_len, ids):
    """Enumerate the cells in the reference's order, drawing as it draws; with ``fill``, write
    them. Returns (cells, A items, B items, X items). Without ``fill`` it only counts, but
    still draws: which X speakers are drawn decides the X sizes, so a counting pass runs on a
    copy of the generator. ``ids[k]`` = speaker, phone a, phone b, context, X speaker.
    """
    n_cells = n_a = n_b = n_x = 0
    scratch = np.empty(max(max_size, max_x, 1), np.int64)
    chosen = np.empty(len(start), np.int64)
    for g in range(len(group_ptr) - 1):
        first, last = group_ptr[g], group_ptr[g + 1]
        if last - first == 1:
            continue
        for ra in range(first, last):
            if within:
                if end[ra] - start[ra] == 1:
                    continue  # X is drawn from A: one item leaves nothing to compare with
                n_chosen = 1
                chosen[0] = ra
            else:
                # X runs: the same (context, phone) by every other speaker, in group order,
                # at most max_x of them drawn
                segment = segment_of[ra]
                n_chosen = 0
                for p in range(peer_ptr[segment], peer_ptr[segment + 1]):
                    if speaker[peers[p]] != speaker[ra]:
                        chosen[n_chosen] = peers[p]
                        n_chosen += 1
                if max_x >= 0 and n_chosen > max_x:
                    sample_indices(state, n_chosen, max_x, scratch)
                    for t in range(max_x):
                        scratch[t] = chosen[scratch[t]]
                    for t in range(max_x):
                        chosen[t] = scratch[t]
                    n_chosen = max_x
            for c in range(n_chosen):
                rx = chosen[c]
                for rb in range(first, last):
                    if rb == ra:
                        continue
                    if within:  # the reference draws B before A here, A before B before X across
                        nb = _take(state, start[rb], end[rb], max_size, fill, b, n_b, scratch)
                        na = _take(state, start[ra], end[ra], max_size, fill, a, n_a, scratch)
                        nx = 0
                    else:
                        na = _take(state, start[ra], end[ra], max_size, fill, a, n_a, scratch)
                        nb = _take(state, start[rb], end[rb], max_size, fill, b, n_b, scratch)
                        nx = _take(state, start[rx], end[rx], max_size, fill, x, n_x, scratch)
                    if fill:
                        a_len[n_cells], b_len[n_cells], x_len[n_cells] = na, nb, nx
                        ids[n_cells, 0] = speaker[ra]
                        ids[n_cells, 1] = phone[ra]
                        ids[n_cells, 2] = phone[rb]
                        ids[n_cells, 3] = context[ra]
                        ids[n_cells, 4] = speaker[rx]
                    n_cells += 1
                    n_a += na
                    n_b += nb
                    n_x += nx
    return n_cells, n_a, n_b, n_x


def enumerate_cells(
    dataset: ABXDataset,
    speaker_mode: str,
    context_mode: str,
    max_size_group: int | None,
    max_x_across: int | None,
    seed: int,
) -> Cells:
    """All cells of one condition, in the reference's order and with its random draws.

    Counted once (on a copy of the generator), then drawn again and written by the same
    compiled walk.
    """
    if speaker_mode not in SPEAKER_MODES or context_mode not in CONTEXT_MODES:
        raise ValueError(f"unknown ABX condition speaker={speaker_mode!r} context={context_mode!r}")
    runs = _runs(dataset, context_mode)
    within = speaker_mode == "within"
    limits = (-1 if max_size_group is None else int(max_size_group), -1 if max_x_across is None else int(max_x_across))
    structure = (within, runs.start, runs.end, runs.group_ptr, runs.phone, runs.speaker, runs.context, runs.peers,
                 runs.peer_ptr, runs.segment_of, *limits)
    state = state_of(random.Random(seed))
    empty = np.zeros(0, np.int64)
    n_cells, n_a, n_b, n_x = _walk(*structure, state.copy(), False, empty, empty, empty, empty, empty, empty,
                                   np.zeros((0, 5), np.int64))
    a, b, x = np.empty(n_a, np.int64), np.empty(n_b, np.int64), np.empty(n_x, np.int64)
    a_len, b_len, x_len = (np.empty(n_cells, np.int64) for _ in range(3))
    ids = np.empty((n_cells, 5), np.int64)
    _walk(*structure, state, True, a, a_len, b, b_len, x, x_len, ids)

    def ptr(lengths):
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    a_ptr = ptr(a_len)
    x_items, x_ptr = (runs.order[a], a_ptr) if within else (runs.order[x], ptr(x_len))
    return Cells(within, runs.order[a], a_ptr, runs.order[b], ptr(b_len), x_items, x_ptr,
                 *(np.ascontiguousarray(ids[:, k]) for k in range(5)))


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
