"""Feature extraction speed: speechsq pipelines vs the reference scripts' per-file librosa calls.

Peer: ``speechsq.features.reference`` (bshall/ZeroSpeech ``preprocess.py`` and
ParallelWaveGAN ``logmelfilterbank``, one file at a time, as published). Both run in this
process on one core, on the same files, in the same run, alternating rounds so that machine
load affects both alike; the best round of each is reported. Also prints the max abs
difference between the two feature sets (they must be identical up to float32 rounding).

    OMP_NUM_THREADS=1 python bench/features.py [--utterances 120] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from speechsq.data_prep.embedded_corpus import make_corpus
from speechsq.features import build_pipeline, load_preprocessing_config
from speechsq.features.reference import REFERENCES


def time_extraction(extract, paths: list[str]) -> tuple[float, dict[str, np.ndarray]]:
    start = time.perf_counter()
    feats = {p: extract(p) for p in paths}
    return time.perf_counter() - start, feats


def bench(name: str, paths: list[str], rounds: int) -> dict:
    cfg = load_preprocessing_config(name)
    ours = build_pipeline(cfg)
    reference = REFERENCES[name]
    audio_seconds = sum(sf.info(p).duration for p in paths)
    ours(paths[0]), reference(paths[0], cfg)  # warm-up (imports, caches)
    best_ours = best_ref = float("inf")
    for _ in range(rounds):
        t_ref, ref_feats = time_extraction(lambda p: reference(p, cfg), paths)
        t_ours, our_feats = time_extraction(ours, paths)
        best_ref, best_ours = min(best_ref, t_ref), min(best_ours, t_ours)
    max_diff = max(float(np.abs(our_feats[p] - ref_feats[p]).max()) for p in paths)
    scale = max(float(np.abs(ref_feats[p]).max()) for p in paths)
    return dict(name=name, files=len(paths), audio_s=audio_seconds, ours_s=best_ours, ref_s=best_ref,
                max_abs_diff=max_diff, feature_scale=scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=120, help="files per corpus (embedded espeak-ng corpus)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, layout in (("zerospeech19", "zerospeech19"), ("vctk", "vctk")):
            root = Path(tmp) / layout
            make_corpus(root, seed=0, layout=layout, n_utterances=args.utterances, nj=2, progress=False)
            paths = sorted(str(p) for p in root.rglob("*.wav"))[: args.utterances]
            rows.append(bench(name, paths, args.rounds))
    print("CPU, 2 cores, this machine; one process, OMP_NUM_THREADS=1; best of "
          f"{args.rounds} alternating rounds; files from the embedded espeak-ng corpus")
    print(f"{'pipeline':<13} {'files':>5} {'audio s':>8} | {'ours utt/s':>10} {'ours RTF':>9} | "
          f"{'ref utt/s':>9} {'ref RTF':>8} | {'speed-up':>8} | {'max|diff|':>9} (feature scale)")
    for r in rows:
        print(f"{r['name']:<13} {r['files']:>5} {r['audio_s']:>8.1f} | {r['files'] / r['ours_s']:>10.1f} "
              f"{r['ours_s'] / r['audio_s']:>9.5f} | {r['files'] / r['ref_s']:>9.1f} {r['ref_s'] / r['audio_s']:>8.5f} | "
              f"{r['ref_s'] / r['ours_s']:>7.2f}x | {r['max_abs_diff']:>9.2e} ({r['feature_scale']:.3g})")


if __name__ == "__main__":
    main()
