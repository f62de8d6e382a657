"""Codebook usage statistics of extracted units: perplexity, active codes, usage histogram.

Perplexity is ``2 ** H`` of the code distribution pooled over all frames (the usual
"effective number of codes"); active codes are the codes used at least once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from speechsq.eval.bitrate import entropy_bits


@dataclass
class CodebookStats:
    num_codes: int
    perplexity: float
    active_codes: int
    entropy_bits: float
    n_frames: int
    counts: list[int]

    def to_dict(self, with_counts: bool = False) -> dict:
        out = asdict(self)
        if not with_counts:
            out.pop("counts")
        return out


def code_counts(indices: Iterable[np.ndarray], num_codes: int) -> np.ndarray:
    counts = np.zeros(num_codes, dtype=np.int64)
    for seq in indices:
        seq = np.asarray(seq).reshape(-1)
        seq = seq[seq >= 0]  # -1 marks padding in the quantizer contract
        if seq.size and seq.max() >= num_codes:
            raise ValueError(f"code index {int(seq.max())} >= num_codes={num_codes}")
        counts += np.bincount(seq, minlength=num_codes)
    return counts


def codebook_stats(indices: Iterable[np.ndarray], num_codes: int) -> CodebookStats:
    counts = code_counts(indices, num_codes)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("no frames: cannot compute codebook statistics")
    h = entropy_bits(counts)
    return CodebookStats(num_codes, float(2.0**h), int((counts > 0).sum()), h, n, counts.tolist())


def plot_code_usage(counts: np.ndarray, path: str | Path, title: str = "code usage") -> Path:
    """Bar chart of code frequencies, sorted by frequency (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1)
    order = np.argsort(-freq)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].bar(np.arange(len(freq)), freq, width=1.0, color="tab:blue")
    axes[0].set_xlabel("code index")
    axes[0].set_ylabel("frequency")
    axes[0].set_title(title)
    axes[1].bar(np.arange(len(freq)), freq[order], width=1.0, color="tab:orange")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("codes sorted by frequency")
    active = int((counts > 0).sum())
    h = entropy_bits(counts)
    axes[1].set_title(f"active {active}/{len(counts)}, perplexity {2 ** h:.1f}")
    from speechsq.eval.plots import save_figure

    return save_figure(fig, path, dpi=110)
