"""Median milliseconds per training step of the speech model, per quantizer, on CPU.

Peer: the same model with the ``identity`` quantizer (the quantizer bypassed), measured in
the same run with the same threads, batch and weights initialisation. The paper
configuration (SQ-VAE App. E.2.2): 768-channel encoder, 2 x BiGRU(128), jitter 0.5,
K = 512, d_b = 64, a batch of 52 segments of 32 frames (+1 context frame each side).

A step is exactly the trainer's: forward (with the quantizer's paired likelihood from
speechsq/conf/quantizer/<name>.yaml), backward, gradient clipping at 1, Adam. Goal: the
quantizer adds at most 10% to the bypassed step time at K = 512.

    python bench/train_step.py --threads 2
    python bench/train_step.py --quantizers vq_ema sq_gauss1 --steps 10
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from omegaconf import OmegaConf

from speechsq.models import build_model
from speechsq.quantizers import StepContext, list_quantizers
from speechsq.training.config import compose_config

log = logging.getLogger("bench.train_step")

DEFAULT_QUANTIZERS = ["vq_ema", "sq_gauss1", "sq_gauss4", "gmvq", "edvae"]
PEER = "identity"


def build(name: str, n_speakers: int, overrides: list[str]):
    cfg = compose_config(["experiment=paper", f"quantizer={name}", "data.feats_dir=unused", *overrides])
    cfg.model.n_speakers = n_speakers
    torch.manual_seed(0)
    return build_model(cfg), cfg


class Stepper:
    """One model with its optimiser; ``step()`` returns (wall, process CPU) ms of one training step."""

    def __init__(self, model):
        self.model = model.train()
        self.opt = torch.optim.Adam(model.parameters(), lr=4e-4)
        self.i = 0

    def step(self, batch) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        out = self.model(batch, StepContext(step=self.i, temperature=1.0))
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.i += 1
        return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3


def paired_medians(model, peer, batch, steps: int, warmup: int) -> dict[str, float]:
    """Alternate the two models step by step, so that load changes on a shared machine hit both.

    Wall time is what a user waits; process CPU time (summed over threads) is the work done,
    which is much less disturbed when other processes compete for the cores.
    """
    a, b = Stepper(model), Stepper(peer)
    times: dict[str, list[float]] = {"wall": [], "cpu": [], "peer_wall": [], "peer_cpu": []}
    for i in range(warmup + steps):
        (wa, ca), (wb, cb) = a.step(batch), b.step(batch)
        if i >= warmup:
            for key, value in zip(times, (wa, ca, wb, cb)):
                times[key].append(value)
    out = {key: statistics.median(values) for key, values in times.items()}
    # under contention the fastest step is the best estimate of the undisturbed cost
    out.update({f"min_{key}": min(values) for key, values in times.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantizers", nargs="*", default=DEFAULT_QUANTIZERS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per quantizer (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=52)
    parser.add_argument("--frames", type=int, default=32, help="frames per segment (plus 1 context frame each side)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. quantizer.num_codes=1024")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    registered = set(list_quantizers())
    names = [q for q in args.quantizers if q in registered]
    for missing in sorted(set(args.quantizers) - registered):
        print(f"note: quantizer {missing!r} is not registered in this checkout; skipped")
    g = torch.Generator().manual_seed(0)
    n_speakers = 100
    batch = {
        "feats": torch.rand(args.batch, 80, args.frames + 2, generator=g),
        "speaker": torch.randint(0, n_speakers, (args.batch,), generator=g),
        "lengths": torch.full((args.batch,), args.frames + 2),
    }

    rows = []
    for name in names:
        model, cfg = build(name, n_speakers, args.overrides)
        peer_model, _ = build(PEER, n_speakers, args.overrides)
        med = paired_medians(model, peer_model, batch, args.steps, args.warmup)
        rows.append((name, cfg.quantizer.num_codes, model.quantizer.input_dim, OmegaConf.select(cfg, "model.likelihood.name"), med))

    print(f"train step, speech paper config, batch {args.batch} x {args.frames}+2 frames, CPU {args.threads} threads, "
          f"median of {args.steps} steps after {args.warmup} warm-up, model and peer alternating step by step; "
          f"peer = same model with `{PEER}` quantizer")
    print(f"| quantizer | K | encoder out | likelihood | wall ms (median) | {PEER} wall | wall ratio "
          f"| CPU ms (median) | {PEER} CPU | CPU ratio | CPU ms (min) | {PEER} CPU (min) | min ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, k, width, lik, m in rows:
        print(f"| {name} | {k} | {width} | {lik} | {m['wall']:.0f} | {m['peer_wall']:.0f} | {m['wall'] / m['peer_wall']:.3f} "
              f"| {m['cpu']:.0f} | {m['peer_cpu']:.0f} | {m['cpu'] / m['peer_cpu']:.3f} "
              f"| {m['min_cpu']:.0f} | {m['min_peer_cpu']:.0f} | {m['min_cpu'] / m['min_peer_cpu']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
