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


def plot_code_usage(counts: np.ndarray, path: str | Path, title: str = "code usage", covers: str = "") -> Path:
    """Code usage (PNG, :func:`code_usage_figure`); ``covers`` says what the counts are
    (set, run, seed), e.g. ``"test set (exp/x/units/test), seed 1"``."""
    from speechsq.eval.plots import save_figure

    return save_figure(code_usage_figure(counts, title, covers), path, dpi=110)


def code_usage_figure(counts: np.ndarray, title: str = "code usage", covers: str = ""):
    """The share of frames of every code index, and the same shares sorted on a log scale,
    with lines at the number of active codes, the perplexity and the codebook size K."""
    from speechsq.eval.plots import _pyplot

    plt = _pyplot()
    counts = np.asarray(counts, dtype=np.float64)
    k = len(counts)
    share = 100.0 * counts / max(counts.sum(), 1.0)
    active = int((counts > 0).sum())
    perplexity = 2.0 ** entropy_bits(counts)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].bar(np.arange(k), share, width=1.0, color="tab:blue")
    axes[0].set_xlim(-0.5, k - 0.5)
    axes[0].set_xlabel(f"code index (codebook size K = {k})")
    axes[0].set_ylabel("share of frames (%)")
    axes[0].set_title("usage per code")
    ranked = np.sort(share)[::-1]
    used = ranked[ranked > 0]
    axes[1].bar(np.arange(1, len(used) + 1), used, width=1.0, color="tab:orange", label="used codes")
    axes[1].set_yscale("log")
    axes[1].set_xlim(0.5, 1.04 * k + 0.5)
    axes[1].axvline(active, color="tab:green", linestyle="-", linewidth=1.2, label=f"active codes = {active}")
    axes[1].axvline(perplexity, color="tab:purple", linestyle=":", linewidth=1.5, label=f"perplexity = {perplexity:.1f}")
    axes[1].axvline(k, color="0.3", linestyle="--", linewidth=1.2, label=f"codebook size K = {k}")
    axes[1].set_xlabel("rank of the code (most used first)")
    axes[1].set_ylabel("share of frames (%, log scale)")
    axes[1].set_title("codes sorted by usage")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"{title}: code usage over {int(counts.sum())} latent frames" + (f"\n{covers}" if covers else ""), fontsize=10)
    return fig
