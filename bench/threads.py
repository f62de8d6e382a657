"""Training-step time alone and next to one other CPU-bound process, per thread policy.

    python bench/threads.py [--steps 150] [--repeats 3]

The mini speech model (``experiment=mini``, sq_gauss1, batch 16 x 34 frames) is trained for
``--steps`` steps on random features in a fresh process per measurement, with

* **torch default**: as many intra-op threads as cores (the named peer: what torch does when
  nobody chooses);
* **speechsq policy**: ``speechsq.threads.resolve_threads()`` for one job alone (cores) and
  for a job that shares the machine (1 thread per job: ``OMP_NUM_THREADS=1``, what the
  recipes set per training job, ``cores // jobs``).

Each is timed alone and with one competing CPU-bound process (a busy loop in another
process) running. The ratio "with competitor / alone" is the slowdown the issue bounds at
2x; the median over ``--repeats`` of the per-step time is reported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
threads = int(sys.argv[1]); steps = int(sys.argv[2])
torch.set_num_threads(threads)
from speechsq.training.config import compose_config
from speechsq.models import build_model
from speechsq.quantizers import StepContext
from omegaconf import open_dict
cfg = compose_config(["experiment=mini", "quantizer=sq_gauss1", "data.feats_dir=unused"])
with open_dict(cfg):
    cfg.model.n_speakers = 12
torch.manual_seed(0)
model = build_model(cfg)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
feats = torch.rand(16, 80, 34)
batch = {"feats": feats, "speaker": torch.arange(16) % 12, "lengths": torch.full((16,), 34)}
def step():
    out = model(batch, StepContext(temperature=0.5))
    opt.zero_grad(); out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
for _ in range(10):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / steps, "threads": torch.get_num_threads()}))
"""


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def time_steps(threads: int, steps: int, competitor: bool) -> float:
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=_busy, args=(stop,), daemon=True) if competitor else None
    if busy:
        busy.start()
        time.sleep(0.5)
    try:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(steps)], env=env,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]
    finally:
        if busy:
            stop.set()
            busy.join()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from speechsq.threads import available_cores

    cores = available_cores()
    policies = {f"torch default ({cores} threads)": cores, "speechsq, one of several jobs (1 thread)": 1}
    rows = []
    for name, threads in policies.items():
        alone = statistics.median(time_steps(threads, args.steps, False) for _ in range(args.repeats))
        loaded = statistics.median(time_steps(threads, args.steps, True) for _ in range(args.repeats))
        rows.append((name, threads, alone, loaded))
    print(f"machine: {cores} cores; mini speech model, sq_gauss1, batch 16 x 34 frames, {args.steps} steps, "
          f"median of {args.repeats}")
    print(f"{'policy':<44} {'alone (ms/step)':>16} {'+1 busy process':>16} {'slowdown':>9}")
    for name, threads, alone, loaded in rows:
        print(f"{name:<44} {1000 * alone:>16.1f} {1000 * loaded:>16.1f} {loaded / alone:>8.1f}x")
    peer = rows[0]
    ours = rows[1]
    print(f"with a competing process, speechsq's per-job policy is {peer[3] / ours[3]:.1f}x faster per step than torch's default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
