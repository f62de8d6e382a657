"""Sequence alignment for ABX: path-normalised DTW and a normalised edit distance.

DTW follows the libri-light / ZeroSpeech ABX definition exactly (float32 throughout):

* ``cost[i, j] = d[i, j] + min(cost[i-1, j], cost[i-1, j-1], cost[i, j-1])`` with the
  first row and column accumulated along the border;
* the result is ``cost[n-1, m-1] / L`` with ``L`` the length of the path found by
  backtracking from the end, preferring the diagonal on ties, then the left (``j-1``)
  step over the upward (``i-1``) one, and adding the remaining border run at the end.

Because of that tie rule DTW is not exactly symmetric (``dtw(d) != dtw(d.T)`` can happen
when costs tie), which is why callers keep track of which sequence is the row sequence.

The edit distance (discrete units) is the Levenshtein distance (all edits cost 1) divided
by the longer length, computed in float32.

Three implementations of each, which tests hold equal bit for bit on the same inputs:

* compiled scalar kernels (numba, ``cache=True``) used by the CPU backend
  (:mod:`speechsq.eval.abx_numba`) one pair at a time inside its cell loop;
* batched torch kernels (:func:`dtw_torch`, :func:`edit_distance_torch`) for the device
  backend: pairs of any lengths padded into one ``(B, N, M)`` batch, swept along
  anti-diagonals so that one tensor operation advances every pair and every cell of a
  diagonal (cells past a pair's own ``(n, m)`` never feed back into it, so padding is
  harmless); they run on CUDA or, in tests, on the CPU;
* :func:`dtw_naive`, a plain double loop of the definition, the reference for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

if TYPE_CHECKING:  # torch is imported where the torch kernels run: the CPU path never loads it
    import torch


# --------------------------------------------------------------------------- compiled kernels


@njit(cache=True, nogil=True)
def dtw_normalised(dist, cost):
    """Path-normalised DTW of one ``(n, m)`` float32 distance matrix (any strides).

    ``cost`` is scratch space of at least ``(n, m)`` float32. Returns a float32.
    """
    n, m = dist.shape
    cost[0, 0] = dist[0, 0]
    for j in range(1, m):
        cost[0, j] = dist[0, j] + cost[0, j - 1]
    for i in range(1, n):
        cost[i, 0] = dist[i, 0] + cost[i - 1, 0]
        for j in range(1, m):
            best = cost[i - 1, j - 1]
            if cost[i - 1, j] < best:
                best = cost[i - 1, j]
            if cost[i, j - 1] < best:
                best = cost[i, j - 1]
            cost[i, j] = dist[i, j] + best
    i, j, length = n - 1, m - 1, 1
    while i > 0 and j > 0:
        up, left, diag = cost[i - 1, j], cost[i, j - 1], cost[i - 1, j - 1]
        if diag <= left and diag <= up:
            i -= 1
            j -= 1
        elif left <= up:
            j -= 1
        else:
            i -= 1
        length += 1
    length += i + j  # the rest of the border run (one of i, j is 0)
    return cost[n - 1, m - 1] / np.float32(length)


@njit(cache=True, nogil=True)
def edit_distance_normalised(a, b, row):
    """Levenshtein distance of two integer sequences divided by the longer length (float32).

    ``row`` is int64 scratch of at least ``len(b) + 1`` entries.
    """
    n, m = len(a), len(b)
    for j in range(m + 1):
        row[j] = j
    for i in range(1, n + 1):
        diag = row[0]
        row[0] = i
        for j in range(1, m + 1):
            above = row[j]
            best = diag + (0 if a[i - 1] == b[j - 1] else 1)
            if above + 1 < best:
                best = above + 1
            if row[j - 1] + 1 < best:
                best = row[j - 1] + 1
            row[j] = best
            diag = above
    return np.float32(row[m]) / np.float32(max(n, m))


@njit(cache=True)
def _dtw_each(dist, n, m, out):
    cost = np.empty((dist.shape[1], dist.shape[2]), np.float32)
    for p in range(dist.shape[0]):
        out[p] = dtw_normalised(dist[p, : n[p], : m[p]], cost)


def dtw_batch(dist: np.ndarray, n: np.ndarray | None = None, m: np.ndarray | None = None) -> np.ndarray:
    """DTW of a batch of (optionally padded) distance matrices with the compiled kernel.

    dist: ``(B, N, M)``; ``n``/``m``: the true sizes (default: all ``N``/``M``).
    Returns ``(B,)`` float32.
    """
    dist = np.asarray(dist, dtype=np.float32)
    if dist.ndim != 3:
        raise ValueError(f"dist must be (B, n, m), got shape {dist.shape}")
    batch, rows, cols = dist.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"DTW needs non-empty sequences, got n={rows}, m={cols}")
    n = np.full(batch, rows, np.int64) if n is None else np.asarray(n, np.int64)
    m = np.full(batch, cols, np.int64) if m is None else np.asarray(m, np.int64)
    out = np.empty(batch, np.float32)
    _dtw_each(dist, n, m, out)
    return out


@njit(cache=True)
def _edit_each(a, b, n, m, out):
    row = np.empty(b.shape[1] + 1, np.int64)
    for p in range(a.shape[0]):
        out[p] = edit_distance_normalised(a[p, : n[p]], b[p, : m[p]], row)


def edit_distance_batch(a: np.ndarray, b: np.ndarray, n=None, m=None) -> np.ndarray:
    """Normalised edit distance of ``(B, N)`` and ``(B, M)`` integer sequences (compiled)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"expected (B, n) and (B, m) unit sequences, got {a.shape} and {b.shape}")
    if a.shape[1] == 0 or b.shape[1] == 0:
        raise ValueError(f"edit distance needs non-empty sequences, got n={a.shape[1]}, m={b.shape[1]}")
    n = np.full(len(a), a.shape[1], np.int64) if n is None else np.asarray(n, np.int64)
    m = np.full(len(b), b.shape[1], np.int64) if m is None else np.asarray(m, np.int64)
    out = np.empty(len(a), np.float32)
    _edit_each(a, b, n, m, out)
    return out


# --------------------------------------------------------------------------- batched torch kernels


def _diagonal(flat: torch.Tensor, base: int, step: int, first: int, count: int) -> torch.Tensor:
    """Rows ``base + (first + t) * step``, t < count, of a ``(cells, B)`` tensor, as a view.

    In a row-major ``(R, C)`` grid the cells (i, k - i) of anti-diagonal k sit at
    ``k + i * (C - 1)``: a strided slice, so a diagonal needs no index tensors.
    """
    lo = base + first * step
    return flat[lo : lo + (count - 1) * step + 1 : max(step, 1)]


def _sweep(padded: torch.Tensor, local: torch.Tensor, rows: int, cols: int):
    """Anti-diagonal by anti-diagonal: views (here, up, left, diagonal, local values) of a
    ``(rows + 1) x (cols + 1)`` table padded with row 0 and column 0, stored flat as
    ``(cells, B)`` (row stride ``cols + 1``), and of the ``rows x cols`` local values.
    The table cell of (i, j) is (i + 1, j + 1); its neighbours (i, j + 1), (i + 1, j), (i, j)."""
    for k in range(rows + cols - 1):
        first = max(0, k - cols + 1)
        count = min(k, rows - 1) - first + 1

        def cell(base):
            return _diagonal(padded, base, cols, first, count)

        yield cell(cols + 2 + k), cell(k + 1), cell(cols + 1 + k), cell(k), _diagonal(local, k, cols - 1, first, count)


def dtw_torch(dist: torch.Tensor, n: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Path-normalised DTW of padded distance matrices on dist's device.

    dist: ``(B, N, M)`` float32; ``n``, ``m``: ``(B,)`` true sizes (1..N, 1..M).
    Returns ``(B,)`` float32, equal bit for bit to :func:`dtw_normalised` per pair.
    """
    import torch

    batch, rows, cols = dist.shape
    device = dist.device
    d = dist.permute(1, 2, 0).reshape(rows * cols, batch)  # batch last: diagonals are row slices
    # cost padded with an +inf border (row 0 and column 0) so border cells need no special
    # case; the corner 0 makes cost[0, 0] = d[0, 0] + 0 (the same float as d[0, 0]).
    cost = torch.full(((rows + 1) * (cols + 1), batch), float("inf"), dtype=torch.float32, device=device)
    cost[0] = 0.0
    for here, up, left, diag, local in _sweep(cost, d, rows, cols):
        torch.add(local, torch.minimum(torch.minimum(up, diag), left), out=here)
    grid = cost.view(rows + 1, cols + 1, batch)
    pairs = torch.arange(batch, device=device)
    n, m = n.to(device), m.to(device)
    final = grid[n, m, pairs]
    # Backtrack every pair at once (padded coordinates: cell (i, j) lives at (i+1, j+1)).
    i, j = n - 1, m - 1
    length = torch.ones(batch, dtype=torch.int64, device=device)
    for _ in range(rows + cols):
        active = (i > 0) & (j > 0)
        if not bool(active.any()):
            break
        up, left, diag = grid[i, j + 1, pairs], grid[i + 1, j, pairs], grid[i, j, pairs]
        take_diag = (diag <= left) & (diag <= up)
        take_left = ~take_diag & (left <= up)
        take_up = ~take_diag & ~take_left
        i = i - (active & (take_diag | take_up)).long()
        j = j - (active & (take_diag | take_left)).long()
        length += active.long()
    length += i + j
    return final / length.float()


def edit_distance_torch(a: torch.Tensor, b: torch.Tensor, n: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Normalised edit distance of padded integer sequences ``(B, N)``, ``(B, M)`` (float32)."""
    import torch

    batch, rows = a.shape
    cols = b.shape[1]
    device = a.device
    mismatch = (a.T[:, None, :] != b.T[None, :, :]).int().reshape(rows * cols, batch)
    table = torch.empty((rows + 1, cols + 1, batch), dtype=torch.int32, device=device)
    table[:, 0] = torch.arange(rows + 1, device=device, dtype=torch.int32)[:, None]
    table[0, :] = torch.arange(cols + 1, device=device, dtype=torch.int32)[:, None]
    for here, up, left, diag, local in _sweep(table.view(-1, batch), mismatch, rows, cols):
        torch.minimum(torch.minimum(up, left) + 1, diag + local, out=here)
    pairs = torch.arange(batch, device=device)
    n, m = n.to(device), m.to(device)
    return table[n, m, pairs].float() / torch.maximum(n, m).float()


# --------------------------------------------------------------------------- reference


def dtw_naive(dist: np.ndarray) -> float:
    """Plain O(n*m) double loop of the same definition (a reference for tests)."""
    n, m = dist.shape
    dist = dist.astype(np.float32)
    cost = np.zeros((n, m), dtype=np.float32)
    cost[0, 0] = dist[0, 0]
    for i in range(1, n):
        cost[i, 0] = dist[i, 0] + cost[i - 1, 0]
    for j in range(1, m):
        cost[0, j] = dist[0, j] + cost[0, j - 1]
    for i in range(1, n):
        for j in range(1, m):
            cost[i, j] = dist[i, j] + min(cost[i - 1, j], cost[i - 1, j - 1], cost[i, j - 1])
    i, j, length = n - 1, m - 1, 1
    while i > 0 and j > 0:
        up, left, diag = cost[i - 1, j], cost[i, j - 1], cost[i - 1, j - 1]
        if diag <= left and diag <= up:
            i, j = i - 1, j - 1
        elif left <= up:
            j -= 1
        else:
            i -= 1
        length += 1
    length += (j if i == 0 else 0) + (i if j == 0 else 0)
    return float(np.float32(cost[n - 1, m - 1]) / np.float32(length))
