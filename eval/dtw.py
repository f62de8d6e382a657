"""Batched sequence alignment for ABX: path-normalised DTW and a normalised edit distance.

Both work on a batch of pairs that share one shape ``(n, m)`` and sweep the dynamic
programme along anti-diagonals, so one numpy operation advances every pair of the batch
and every cell of a diagonal at once (``n + m - 1`` Python steps per batch instead of
``n * m`` per pair).

DTW follows the libri-light / ZeroSpeech ABX definition exactly (float32 throughout):

* ``cost[i, j] = d[i, j] + min(cost[i-1, j], cost[i-1, j-1], cost[i, j-1])`` with the
  first row and column accumulated along the border;
* the result is ``cost[n-1, m-1] / L`` with ``L`` the length of the path found by
  backtracking from the end, preferring the diagonal on ties, then the left (``j-1``)
  step over the upward (``i-1``) one, and adding the remaining border run at the end.

Because of that tie rule DTW is not exactly symmetric (``dtw(d) != dtw(d.T)`` can happen
when costs tie), which is why callers keep track of which sequence is the row sequence.
"""

from __future__ import annotations

import numpy as np


def _antidiagonals(n: int, m: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cell coordinates (i, j) of each anti-diagonal k = i + j of an n x m grid."""
    out = []
    for k in range(n + m - 1):
        i = np.arange(max(0, k - m + 1), min(k, n - 1) + 1)
        out.append((i, k - i))
    return out


def dtw_batch(dist: np.ndarray) -> np.ndarray:
    """Path-length-normalised DTW of a batch of frame-distance matrices.

    dist: ``(B, n, m)`` float32 (cast if not), one matrix per pair.
    Returns ``(B,)`` float32 ``cost[n-1, m-1] / path_length``.
    """
    if dist.ndim != 3:
        raise ValueError(f"dist must be (B, n, m), got shape {dist.shape}")
    batch, n, m = dist.shape
    if n == 0 or m == 0:
        raise ValueError(f"DTW needs non-empty sequences, got n={n}, m={m}")
    # Batch on the last axis so that gathering a diagonal reads contiguous rows.
    d = np.ascontiguousarray(np.moveaxis(dist.astype(np.float32, copy=False), 0, -1))
    # cost is padded with an +inf border so border cells need no special case;
    # the corner 0 makes cost[0, 0] = d[0, 0] + 0 (the same float as d[0, 0]).
    cost = np.full((n + 1, m + 1, batch), np.inf, dtype=np.float32)
    cost[0, 0] = 0.0
    for i, j in _antidiagonals(n, m):
        best = np.minimum(np.minimum(cost[i, j + 1], cost[i, j]), cost[i + 1, j])
        cost[i + 1, j + 1] = d[i, j] + best
    final = cost[n, m].copy()

    # Backtrack every pair at once (padded coordinates: cell (i, j) lives at (i+1, j+1)).
    cols = np.arange(batch)
    i = np.full(batch, n - 1)
    j = np.full(batch, m - 1)
    length = np.ones(batch, dtype=np.int64)
    for _ in range(n + m):
        active = (i > 0) & (j > 0)
        if not active.any():
            break
        up = cost[i, j + 1, cols]
        left = cost[i + 1, j, cols]
        diag = cost[i, j, cols]
        take_diag = (diag <= left) & (diag <= up)
        take_left = ~take_diag & (left <= up)
        take_up = ~take_diag & ~take_left
        i = i - (active & (take_diag | take_up))
        j = j - (active & (take_diag | take_left))
        length += active
    length += np.where(i == 0, j, 0) + np.where(j == 0, i, 0)
    return final / length.astype(np.float32)


def edit_distance_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Levenshtein distance between integer sequences, divided by the longer length.

    a: ``(B, n)``, b: ``(B, m)`` integer unit sequences. Substitution, insertion and
    deletion all cost 1. Returns ``(B,)`` float32 in [0, 1].
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"expected (B, n) and (B, m) unit sequences, got {a.shape} and {b.shape}")
    batch, n = a.shape
    m = b.shape[1]
    if n == 0 or m == 0:
        raise ValueError(f"edit distance needs non-empty sequences, got n={n}, m={m}")
    mismatch = (a.T[:, None, :] != b.T[None, :, :]).astype(np.int32)  # (n, m, B)
    table = np.empty((n + 1, m + 1, batch), dtype=np.int32)
    table[:, 0] = np.arange(n + 1)[:, None]
    table[0, :] = np.arange(m + 1)[:, None]
    for i, j in _antidiagonals(n, m):
        table[i + 1, j + 1] = np.minimum(
            np.minimum(table[i, j + 1] + 1, table[i + 1, j] + 1), table[i, j] + mismatch[i, j]
        )
    return (table[n, m] / max(n, m)).astype(np.float32)


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
