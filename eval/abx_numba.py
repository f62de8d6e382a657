"""The CPU backend of ABX: one compiled (numba) kernel scores whole cells.

Where the time went before (cProfile, 12,000 synthetic items / 20 speakers, cosine, one
thread, 7.2 s in all): gathering each pair's frames into per-pair batches 2.4 s, DTW
1.1 s, float64 batched matrix products and ``acos`` 1.0 s, cell enumeration 0.7 s, sorting
and looking up 2.9 M distinct pairs 0.8 s. Deduplicating pairs across cells saved only 12 %
of the alignments (3.36 M needed, 2.95 M distinct) and cost more than that in sorting.

So this kernel does no global pair bookkeeping. For each cell (in parallel over cells):

1. the frames of its A and B items (the columns) and of a tile of X items (the rows) are
   gathered once as float64;
2. the frame distances of the whole tile come from one matrix product (BLAS) plus a
   vectorised elementwise ``acos`` (:mod:`speechsq.eval.abx_distance`), or a direct loop
   for the other distances;
3. every X-A and X-B pair is aligned on its sub-block of the tile (:mod:`speechsq.eval.dtw`),
   within speaker each unordered A-A pair once, with the earlier item as row;
4. the triplets are counted in integers (twice the correct count: ``d(X,A) < d(X,B)``
   counts 2, a tie 1), so the score has no rounding until the final division.

X items are tiled so that a tile's distances stay under ``tile_entries``, which bounds the
memory of a cell of any size (without subsampling, groups can hold thousands of items);
the per-cell distance matrices ``d(X, A)``, ``d(X, B)`` are float32 (the reference keeps
them too). Cells are processed in chunks (a progress bar step each); nothing is kept
between chunks but two integers per cell.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from threadpoolctl import threadpool_limits

from speechsq.eval.abx_distance import KL_EPSILON, frame_distance_tile
from speechsq.eval.dtw import dtw_normalised, edit_distance_normalised

TILE_ENTRIES = 1 << 20  # frame distances per X tile (8 MiB float64 + 4 MiB float32)
CHUNK_ALIGNMENTS = 1 << 18  # alignments per kernel call (one progress bar step)


@njit(cache=True, nogil=True)
def _offsets(length, items):
    offsets = np.empty(len(items) + 1, np.int64)
    offsets[0] = 0
    for t in range(len(items)):
        offsets[t + 1] = offsets[t] + length[items[t]]
    return offsets


@njit(cache=True, nogil=True)
def _gather(frames, start, length, items, offsets, transposed, with_logs):
    """float64 frames of ``items`` stacked, ``(F, D)`` or transposed ``(D, F)``, and
    ``log(frame + eps)`` in the same layout when ``with_logs`` (else an empty array)."""
    total, dim = offsets[-1], frames.shape[1]
    out = np.empty((dim, total) if transposed else (total, dim), np.float64)
    for t in range(len(items)):
        s = start[items[t]]
        for f in range(length[items[t]]):
            row = offsets[t] + f
            for k in range(dim):
                if transposed:
                    out[k, row] = frames[s + f, k]
                else:
                    out[row, k] = frames[s + f, k]
    logs = np.empty(out.shape if with_logs else (0, 0), np.float64)
    if with_logs:
        flat, flat_logs = out.ravel(), logs.ravel()
        for e in range(flat.size):
            flat_logs[e] = math.log(flat[e] + KL_EPSILON)
    return out, logs


@njit(cache=True, nogil=True)
def count_correct(dxa, dxb, symmetric):
    """Twice the number of (x, a, b) with d(x,a) < d(x,b), plus the ties (each counts 1)."""
    twice = 0
    for i in range(dxa.shape[0]):
        for j in range(dxa.shape[1]):
            if symmetric and i == j:
                continue
            d = dxa[i, j]
            for k in range(dxb.shape[1]):
                if d < dxb[i, k]:
                    twice += 2
                elif d == dxb[i, k]:
                    twice += 1
    return twice


@njit(cache=True, nogil=True)
def _score_dtw_cell(frames, start, length, xs, cols, n_a, symmetric, code, with_logs, tile_entries, dxa, dxb):
    """Fill d(X, A) and d(X, B) of one cell (``cols`` = A items then B items)."""
    col_off = _offsets(length, cols)
    cols_t, col_logs_t = _gather(frames, start, length, cols, col_off, True, with_logs)
    n_cols = col_off[-1]
    longest = 0
    for t in range(len(cols)):
        longest = max(longest, length[cols[t]])
    for t in range(len(xs)):
        longest = max(longest, length[xs[t]])
    cost = np.empty((longest, longest), np.float32)
    lo = 0
    while lo < len(xs):
        hi, rows_in_tile = lo, 0
        while hi < len(xs) and (hi == lo or (rows_in_tile + length[xs[hi]]) * n_cols <= tile_entries):
            rows_in_tile += length[xs[hi]]
            hi += 1
        row_off = _offsets(length, xs[lo:hi])
        rows, row_logs = _gather(frames, start, length, xs[lo:hi], row_off, False, with_logs)
        tile = np.empty((row_off[-1], n_cols), np.float32)
        frame_distance_tile(code, rows, cols_t, row_logs, col_logs_t, tile)
        for r in range(hi - lo):
            x = lo + r
            block = tile[row_off[r] : row_off[r + 1]]
            # within speaker X is A: align each unordered pair once, the earlier item as row
            first_a = x + 1 if symmetric else 0
            for a in range(first_a, n_a):
                d = dtw_normalised(block[:, col_off[a] : col_off[a + 1]], cost)
                dxa[x, a] = d
                if symmetric:
                    dxa[a, x] = d
            for b in range(len(cols) - n_a):
                dxb[x, b] = dtw_normalised(block[:, col_off[n_a + b] : col_off[n_a + b + 1]], cost)
        lo = hi


@njit(cache=True, parallel=True)
def score_cells_dtw(frames, start, length, a, a_ptr, b, b_ptr, x, x_ptr, cells, symmetric, code, with_logs, tile_entries, twice_correct):
    """Twice the correct-triplet count of each cell in ``cells`` (frames: float32)."""
    for t in prange(len(cells)):
        k = cells[t]
        a_items = a[a_ptr[k] : a_ptr[k + 1]]
        b_items = b[b_ptr[k] : b_ptr[k + 1]]
        xs = a_items if symmetric else x[x_ptr[k] : x_ptr[k + 1]]
        cols = np.concatenate((a_items, b_items))
        dxa = np.empty((len(xs), len(a_items)), np.float32)
        dxb = np.empty((len(xs), len(b_items)), np.float32)
        _score_dtw_cell(frames, start, length, xs, cols, len(a_items), symmetric, code, with_logs, tile_entries, dxa, dxb)
        twice_correct[t] = count_correct(dxa, dxb, symmetric)


@njit(cache=True, parallel=True)
def score_cells_edit(units, start, length, a, a_ptr, b, b_ptr, x, x_ptr, cells, symmetric, twice_correct):
    """As :func:`score_cells_dtw` for discrete units (``units``: int64 ``(frames,)``)."""
    for t in prange(len(cells)):
        k = cells[t]
        a_items = a[a_ptr[k] : a_ptr[k + 1]]
        b_items = b[b_ptr[k] : b_ptr[k + 1]]
        xs = a_items if symmetric else x[x_ptr[k] : x_ptr[k + 1]]
        longest = 0
        for item in b_items:
            longest = max(longest, length[item])
        for item in a_items:
            longest = max(longest, length[item])
        row = np.empty(longest + 1, np.int64)
        dxa = np.empty((len(xs), len(a_items)), np.float32)
        dxb = np.empty((len(xs), len(b_items)), np.float32)
        for i in range(len(xs)):
            sx = units[start[xs[i]] : start[xs[i]] + length[xs[i]]]
            first_a = i + 1 if symmetric else 0
            for j in range(first_a, len(a_items)):
                d = edit_distance_normalised(sx, units[start[a_items[j]] : start[a_items[j]] + length[a_items[j]]], row)
                dxa[i, j] = d
                if symmetric:
                    dxa[j, i] = d
            for j in range(len(b_items)):
                dxb[i, j] = edit_distance_normalised(sx, units[start[b_items[j]] : start[b_items[j]] + length[b_items[j]]], row)
        twice_correct[t] = count_correct(dxa, dxb, symmetric)


def score_cells_numba(cells, dataset, distance, progress=None) -> np.ndarray:
    """Error rate (0..1) of every cell, computed with the compiled kernels on the CPU.

    ``progress``: a callable taking the number of alignments done since its last call.
    """
    errors = np.empty(len(cells))
    if not len(cells):
        return errors
    comparisons = cells.n_comparisons()
    alignments = cells.n_alignments()
    if distance.discrete:
        units = np.ascontiguousarray(dataset.frames[:, 0])
    with threadpool_limits(limits=1, user_api="blas"):  # numba's threads already fill the cores
        for chunk in cells.chunks(CHUNK_ALIGNMENTS):
            twice = np.empty(len(chunk), np.int64)
            common = (dataset.start, dataset.length, cells.a, cells.a_ptr, cells.b, cells.b_ptr, cells.x, cells.x_ptr, chunk, cells.symmetric)
            if distance.discrete:
                score_cells_edit(units, *common, twice)
            else:
                score_cells_dtw(dataset.frames, *common, distance.code, distance.uses_logs, TILE_ENTRIES, twice)
            errors[chunk] = 1.0 - twice / (2.0 * comparisons[chunk])
            if progress is not None:
                progress(int(alignments[chunk].sum()))
    return errors
