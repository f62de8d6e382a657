"""A synthetic ABX task with phone structure, for tests and benchmarks (no corpus needed).

Speakers read random words from a small lexicon, so that triphone contexts repeat the way
they do in real item files. Each phone lasts a few frames (``phone_frames``, default 3-9
frames of 10 ms); a frame is the phone's prototype vector plus a speaker offset plus noise,
so ABX error is low but not zero and grows with ``noise``. Items are every word-internal
phone with its two neighbours, written in the libri-light item format with onsets/offsets
in seconds. ``units=K`` writes discrete units instead: each frame's nearest of K random
code vectors, one integer per frame (as ``speechsq extract`` writes ``indices/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SyntheticABXTask:
    item_file: Path
    feature_dir: Path
    n_items: int
    n_files: int
    n_speakers: int


def make_synthetic_abx_task(
    out_dir: str | Path,
    n_speakers: int = 4,
    n_items: int = 400,
    n_phones: int = 12,
    n_words: int = 30,
    dim: int = 16,
    noise: float = 4.0,
    speaker_shift: float = 1.5,
    words_per_file: int = 8,
    frame_shift: float = 0.01,
    extension: str = ".npy",
    posteriorgram: bool = False,
    seed: int = 0,
    phone_frames: tuple[int, int] = (3, 10),
    units: int = 0,
) -> SyntheticABXTask:
    """Write ``<out_dir>/features/<file>.npy`` (or ``.txt``) and ``<out_dir>/task.item``.

    posteriorgram: store softmax(frame) instead (non-negative rows summing to one, for the
    KL distances).
    phone_frames: ``[low, high)`` frames per phone (for 20 ms frames, e.g. (2, 6)).
    units: if > 0, store the index of each frame's nearest of ``units`` code vectors.
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    feature_dir = out_dir / "features"
    feature_dir.mkdir(parents=True, exist_ok=True)
    phones = [f"p{k}" for k in range(n_phones)]
    prototypes = rng.normal(size=(n_phones, dim)) * 2.0
    codebook = rng.normal(size=(units, dim)) * 2.0 if units else None
    lexicon = [rng.integers(0, n_phones, size=rng.integers(3, 7)) for _ in range(n_words)]
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    items_per_speaker = -(-n_items // n_speakers)
    n_files = 0
    for s in range(n_speakers):
        speaker = f"spk{s:03d}"
        shift = rng.normal(size=dim) * speaker_shift
        made = 0
        f = 0
        while made < items_per_speaker:
            frames, labels = [], []
            for w in rng.integers(0, n_words, size=words_per_file):
                word = lexicon[w]
                for position, phone in enumerate(word):
                    length = int(rng.integers(*phone_frames))
                    frames.append(prototypes[phone] + shift + noise * rng.normal(size=(length, dim)))
                    labels.append((phone, length, position, word))
            file_id = f"{speaker}_{f:04d}"
            array = np.concatenate(frames)
            if codebook is not None:
                squared = (array**2).sum(1)[:, None] - 2 * array @ codebook.T + (codebook**2).sum(1)[None]
                array = squared.argmin(axis=1).astype(np.int64)
            elif posteriorgram:
                array = np.exp(array - array.max(axis=1, keepdims=True))
                array /= array.sum(axis=1, keepdims=True)
            if codebook is None:
                array = array.astype(np.float32)
            if extension == ".npy":
                np.save(feature_dir / f"{file_id}.npy", array)
            else:
                np.savetxt(feature_dir / f"{file_id}.txt", array, fmt="%.6f")
            n_files += 1
            frame = 0
            for phone, length, position, word in labels:
                if 0 < position < len(word) - 1 and made < items_per_speaker:
                    # boundaries half a frame early so that the reference's slicing keeps
                    # exactly the phone's frames
                    onset = (frame - 0.4) * frame_shift if frame else 0.0
                    offset = (frame + length + 0.6) * frame_shift
                    prev, nxt = phones[word[position - 1]], phones[word[position + 1]]
                    lines.append(f"{file_id} {onset:.4f} {offset:.4f} {phones[phone]} {prev} {nxt} {speaker}")
                    made += 1
                frame += length
            f += 1
    item_file = out_dir / "task.item"
    item_file.write_text("\n".join(lines) + "\n")
    return SyntheticABXTask(item_file, feature_dir, len(lines) - 1, n_files, n_speakers)
