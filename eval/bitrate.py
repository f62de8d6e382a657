"""Bitrate of a discrete unit sequence set, ZeroSpeech 2019 definition.

    bitrate = N * H / D

``N`` the total number of symbols over the file list, ``H`` the entropy (bits) of the
symbol distribution pooled over all files, ``D`` the total duration in seconds
(Dunbar et al. 2019, "The Zero Resource Speech Challenge 2019", Sec. 2.2). A symbol is one
row of a file; rows are compared as whole vectors, so both unit indices and dense
(e.g. one-hot or quantised) rows work. The frame count per second is not assumed: the
duration of each file is passed in (or derived from its frame count and frame shift).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Bitrate:
    bitrate: float  # bits per second
    entropy_bits: float  # H of the pooled symbol distribution
    n_symbols: int  # N
    duration_s: float  # D
    n_distinct: int  # distinct symbols seen

    def to_dict(self) -> dict:
        return asdict(self)


def _rows(sequence: np.ndarray) -> Iterable:
    sequence = np.asarray(sequence)
    if sequence.ndim == 1:
        return sequence.tolist()
    if sequence.ndim == 2:
        return [row.tobytes() for row in np.ascontiguousarray(sequence)]
    raise ValueError(f"a unit sequence must be 1-D (indices) or 2-D (rows), got shape {sequence.shape}")


def entropy_bits(counts: Iterable[int]) -> float:
    counts = np.asarray(list(counts), dtype=np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 (one symbol) into 0.0


def compute_bitrate(
    sequences: Mapping[str, np.ndarray],
    durations: Mapping[str, float] | None = None,
    frame_shift: float | None = None,
) -> Bitrate:
    """Bitrate of ``{file: symbols}``; durations in seconds per file, or ``frame_shift``
    (seconds per row) to derive them from the number of rows."""
    if not sequences:
        raise ValueError("no sequences to compute a bitrate on")
    if durations is None and frame_shift is None:
        raise ValueError("give the file durations or the frame shift")
    counts: Counter = Counter()
    total_duration = 0.0
    for name, sequence in sequences.items():
        rows = _rows(sequence)
        counts.update(rows)
        if durations is not None:
            if name not in durations:
                raise KeyError(f"no duration for {name!r}")
            total_duration += float(durations[name])
        else:
            total_duration += len(rows) * float(frame_shift)
    if total_duration <= 0:
        raise ValueError("total duration is zero: cannot compute a bitrate")
    n_symbols = sum(counts.values())
    entropy = entropy_bits(counts.values())
    return Bitrate(n_symbols * entropy / total_duration, entropy, n_symbols, total_duration, len(counts))
