"""Benchmark: batched unit extraction vs a per-file loop (same model, same outputs).

    OMP_NUM_THREADS=2 python bench/extract.py [--utts 200] [--paper-size]

The model is the speech VQ-VAE of the ``mini`` experiment (or the paper's sizes with
``--paper-size``), randomly initialised: extraction cost does not depend on training.
Features are random log-Mel matrices of 100-800 frames (1-8 s at 10 ms). Both ways write
the full output (indices, z_q, z_e, units/durations, ZeroSpeech tree); the per-file loop is
``speechsq.eval.extract.extract`` with ``batch_size=1``, i.e. what a simple script that
encodes one file at a time does. The indices of both runs are checked to be identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_model(paper_size: bool):
    from speechsq.models import build_model as build
    from speechsq.training import compose_config

    overrides = ["quantizer=vq_ema", "model.n_speakers=4", "data.feats_dir=unused"]
    if not paper_size:
        overrides.insert(0, "experiment=mini")
    cfg = compose_config(overrides)
    torch.manual_seed(0)
    return build(cfg).eval(), cfg


def main(argv=None) -> int:
    from speechsq.eval.extract import extract

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--utts", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--paper-size", action="store_true")
    args = p.parse_args(argv)
    model, cfg = build_model(args.paper_size)
    rng = np.random.default_rng(0)
    feats = {f"utt{i:04d}": rng.random((int(rng.integers(100, 800)), model.n_mels)).astype(np.float32) for i in range(args.utts)}
    frames = sum(m.shape[0] for m in feats.values())
    print(f"CPU, {os.environ.get('OMP_NUM_THREADS', '?')} threads (OMP_NUM_THREADS), this machine; torch threads {torch.get_num_threads()}")
    print(f"model: {'paper' if args.paper_size else 'mini'} speech VQ-VAE; {args.utts} utterances, {frames} frames ({frames / 100:.0f} s of speech)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, bs in (("per-file loop", 1), (f"batched (batch {args.batch_size})", args.batch_size)):
            out = Path(tmp) / str(bs)
            t0 = time.perf_counter()
            extract(model, feats, out, frame_shift=0.01, batch_size=bs, zerospeech=True, progress=False)
            results[name] = (time.perf_counter() - t0, out)
        (t_loop, out_loop), (t_batch, out_batch) = results.values()
        same = all(np.array_equal(np.load(out_loop / "indices" / f"{u}.npy"), np.load(out_batch / "indices" / f"{u}.npy")) for u in feats)
    for name, (seconds, _) in results.items():
        print(f"{name:<22} {seconds:7.2f} s  {args.utts / seconds:7.1f} utt/s  {frames / 100 / seconds:7.1f} s speech / s")
    print(f"speed-up of batching: {t_loop / t_batch:.1f}x; identical units: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
