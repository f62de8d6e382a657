"""Benchmark: speechsq ABX vs the peer zerospeech-libriabx2 (``zrc_abx2``) on the same inputs.

    OMP_NUM_THREADS=2 python bench/abx.py [--items 12000 --speakers 20] [--distance cosine]

Inputs are synthetic (``speechsq.eval.abx_synthetic``): speakers read words of a small
lexicon, so triphone contexts repeat as in real item files; frames are phone prototypes
plus a speaker offset plus noise (16 dims, 10 ms frames). Both tools score all four
conditions (within/across speaker x within/any context) with the reference defaults
(``max_size_group=10``, ``max_x_across=5``, seed 3459; speechsq reproduces the peer's
seeded draws, so the scores must be identical), and optionally with subsampling off on a
smaller task (``--no-subsample-items``). The peer is installed if missing
(``pip install --no-deps zerospeech-libriabx2 pandas``: its torchaudio requirement is not
used by the ABX path).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def ensure_peer():
    try:
        import zrc_abx2  # noqa: F401
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "zerospeech-libriabx2", "pandas"])
    import zrc_abx2

    return zrc_abx2


def run_case(zrc, task, distance: str, group: int | None, x_across: int | None) -> dict:
    from speechsq.eval.abx import compute_abx

    t0 = time.perf_counter()
    ours = compute_abx(task.item_file, task.feature_dir, distance=distance, max_size_group=group, max_x_across=x_across)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = zrc.EvalABX().eval_abx(
            zrc.EvalArgs(path_data=str(task.feature_dir), path_item_file=str(task.item_file), distance_mode=distance,
                         max_size_group=group or 10**9, max_x_across=x_across or 10**9)
        )
    t_peer = time.perf_counter() - t0
    peer_scores = {f"{r['abx-s-condition']}-{r['abx-c-condition']}": 100 * r["score"] for r in peer}
    return {"ours_s": t_ours, "peer_s": t_peer, "ours": ours.scores, "peer": peer_scores, "cells": ours.n_cells}


def report(title: str, case: dict) -> None:
    print(f"\n### {title}")
    print(f"{'condition':<15}{'speechsq %':>12}{'peer %':>12}{'|diff| pp':>12}{'cells':>9}")
    worst = 0.0
    for key, peer_value in case["peer"].items():
        diff = abs(case["ours"][key] - peer_value)
        worst = max(worst, diff)
        print(f"{key:<15}{case['ours'][key]:>12.4f}{peer_value:>12.4f}{diff:>12.2e}{case['cells'][key]:>9}")
    ratio = case["peer_s"] / case["ours_s"]
    print(f"time: speechsq {case['ours_s']:.2f} s, zerospeech-libriabx2 {case['peer_s']:.2f} s -> {ratio:.1f}x faster; "
          f"max |diff| {worst:.1e} pp")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=12000)
    p.add_argument("--speakers", type=int, default=20)
    p.add_argument("--distance", default="cosine")
    p.add_argument("--no-subsample-items", type=int, default=1500, help="task size for the run without subsampling (0: skip)")
    args = p.parse_args(argv)
    zrc = ensure_peer()
    from speechsq.eval.abx_synthetic import make_synthetic_abx_task

    print(f"CPU, {os.environ.get('OMP_NUM_THREADS', '?')} threads (OMP_NUM_THREADS), this machine; distance {args.distance}")
    with tempfile.TemporaryDirectory() as tmp:
        kl = args.distance.startswith("kl")
        task = make_synthetic_abx_task(Path(tmp) / "big", n_speakers=args.speakers, n_items=args.items, seed=1, posteriorgram=kl)
        print(f"task: {task.n_items} items, {task.n_speakers} speakers, {task.n_files} files")
        report(f"{task.n_items} items, {task.n_speakers} speakers, reference subsampling (10, 5, seed 3459)",
               run_case(zrc, task, args.distance, 10, 5))
        if args.no_subsample_items:
            small = make_synthetic_abx_task(Path(tmp) / "small", n_speakers=6, n_items=args.no_subsample_items, seed=2, posteriorgram=kl)
            report(f"{small.n_items} items, {small.n_speakers} speakers, subsampling off",
                   run_case(zrc, small, args.distance, None, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
