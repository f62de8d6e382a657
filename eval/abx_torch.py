"""The device backend of ABX: the same computation as :mod:`speechsq.eval.abx_numba`, with
the alignments done in batched torch operations on any device (CUDA for ZeroSpeech 2021 /
LibriSpeech scale; tests run it on the CPU and require the CPU backend's numbers).

Per chunk of cells: the X-A pairs (within speaker each unordered A-A pair once, the earlier
item as row) and the X-B pairs are listed, sorted by their lengths and cut into padded
batches of at most ``BATCH_ENTRIES`` frame distances; each batch gathers its frames on the
device, computes frame distances (:func:`speechsq.eval.abx_distance.frame_distances_torch`)
and aligns (:func:`speechsq.eval.dtw.dtw_torch`, or the edit distance for units). The
distances come back to the CPU and the triplets of each cell are counted by the same
compiled counter as the CPU backend, so both backends give the same integers.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from speechsq.eval.abx_cells import Cells
from speechsq.eval.abx_data import ABXDataset
from speechsq.eval.abx_distance import COSINE, SequenceDistance, frame_distances_torch
from speechsq.eval.abx_numba import CHUNK_ALIGNMENTS, count_correct
from speechsq.eval.dtw import dtw_torch, edit_distance_torch

BATCH_ENTRIES = 1 << 22  # padded frame distances (times the feature dimension for broadcast distances) per batch


def _ragged_pairs(n_rows: np.ndarray, n_cols: np.ndarray, upper_only: bool):
    """For blocks of ``n_rows[k] x n_cols[k]``: (block, i, j) of every entry, row-major;
    ``upper_only``: only the entries with ``i < j``."""
    counts = n_rows * n_cols
    block = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    i, j = local // n_cols[block], local % n_cols[block]
    if upper_only:
        keep = i < j
        block, i, j = block[keep], i[keep], j[keep]
    return block, i, j


def pair_distances(dataset: ABXDataset, frames: torch.Tensor, rows: np.ndarray, cols: np.ndarray,
                   distance: SequenceDistance) -> np.ndarray:
    """Sequence distance of every (row item, column item) pair (float32), on frames' device."""
    out = np.empty(len(rows), np.float32)
    if not len(rows):
        return out
    n_all, m_all = dataset.length[rows], dataset.length[cols]
    order = np.lexsort((m_all, n_all))
    device = frames.device
    width = 1 if distance.discrete or distance.code == COSINE else frames.shape[1]  # broadcast distances hold D per entry
    lo = 0
    with torch.no_grad():
        while lo < len(order):
            n_max = int(n_all[order[lo]])
            # pairs sorted by (n, m): the batch's padded size is its last pair's n times the largest m
            hi = lo
            m_max = 0
            while hi < len(order):
                m_next = max(m_max, int(m_all[order[hi]]))
                n_next = int(n_all[order[hi]])
                if hi > lo and (hi - lo + 1) * n_next * m_next * width > BATCH_ENTRIES:
                    break
                m_max, n_max = m_next, n_next
                hi += 1
            sel = order[lo:hi]
            n = torch.from_numpy(n_all[sel]).to(device)
            m = torch.from_numpy(m_all[sel]).to(device)
            a = _padded(frames, dataset, rows[sel], n_max, device)
            b = _padded(frames, dataset, cols[sel], m_max, device)
            if distance.discrete:
                values = edit_distance_torch(a[..., 0], b[..., 0], n, m)
            else:
                values = dtw_torch(frame_distances_torch(distance.code, a.double(), b.double()), n, m)
            out[sel] = values.cpu().numpy()
            lo = hi
    return out


def _padded(frames: torch.Tensor, dataset: ABXDataset, items: np.ndarray, size: int, device) -> torch.Tensor:
    """``(len(items), size, D)`` frames of ``items``, each padded by repeating its last frame
    (padding never reaches a pair's own result: alignment cells only look back)."""
    start = torch.from_numpy(dataset.start[items]).to(device)
    last = torch.from_numpy(dataset.length[items] - 1).to(device)
    steps = torch.minimum(torch.arange(size, device=device)[None, :], last[:, None])
    return frames[start[:, None] + steps]


@njit(cache=True, parallel=True)
def _count_cells(xa, xa_off, xb, xb_off, n_x, n_a, n_b, symmetric, twice_correct):
    for k in prange(len(n_x)):
        dxa = xa[xa_off[k] : xa_off[k + 1]].reshape((n_x[k], n_a[k]))
        dxb = xb[xb_off[k] : xb_off[k + 1]].reshape((n_x[k], n_b[k]))
        twice_correct[k] = count_correct(dxa, dxb, symmetric)


def score_cells_torch(cells: Cells, dataset: ABXDataset, distance: SequenceDistance, device: str | torch.device = "cpu",
                      progress=None) -> np.ndarray:
    """Error rate (0..1) of every cell, the alignments computed with torch on ``device``."""
    errors = np.empty(len(cells))
    if not len(cells):
        return errors
    frames = torch.from_numpy(dataset.frames).to(device)
    n_a_all, n_b_all, n_x_all = cells.sizes()
    comparisons = cells.n_comparisons()
    alignments = cells.n_alignments()
    for chunk in cells.chunks(CHUNK_ALIGNMENTS):
        n_a, n_b, n_x = n_a_all[chunk], n_b_all[chunk], n_x_all[chunk]
        a_base, b_base, x_base = cells.a_ptr[chunk], cells.b_ptr[chunk], cells.x_ptr[chunk]
        # X-A: within speaker X is A, each unordered pair once with the earlier item as row
        block, i, j = _ragged_pairs(n_x, n_a, upper_only=cells.symmetric)
        xa_rows = cells.x[x_base[block] + i]
        xa_cols = cells.a[a_base[block] + j]
        xa_size = n_x * n_a
        xa_off = np.concatenate([[0], np.cumsum(xa_size)])
        xa_pos = xa_off[block] + i * n_a[block] + j
        # X-B
        block_b, ib, jb = _ragged_pairs(n_x, n_b, upper_only=False)
        xb_rows = cells.x[x_base[block_b] + ib]
        xb_cols = cells.b[b_base[block_b] + jb]
        xb_off = np.concatenate([[0], np.cumsum(n_x * n_b)])
        xb_pos = xb_off[block_b] + ib * n_b[block_b] + jb

        values = pair_distances(dataset, frames, np.concatenate([xa_rows, xb_rows]), np.concatenate([xa_cols, xb_cols]), distance)
        xa = np.zeros(int(xa_off[-1]), np.float32)
        xa[xa_pos] = values[: len(xa_pos)]
        if cells.symmetric:
            xa[xa_off[block] + j * n_a[block] + i] = values[: len(xa_pos)]
        xb = np.empty(int(xb_off[-1]), np.float32)
        xb[xb_pos] = values[len(xa_pos) :]
        twice = np.empty(len(chunk), np.int64)
        _count_cells(xa, xa_off, xb, xb_off, n_x, n_a, n_b, cells.symmetric, twice)
        errors[chunk] = 1.0 - twice / (2.0 * comparisons[chunk])
        if progress is not None:
            progress(int(alignments[chunk].sum()))
    return errors
