"""Forward+backward time and peak memory of every registered quantizer, on CPU.

Peer: ``vector_quantize_pytorch.VectorQuantize`` (EMA codebook, decay 0.99, commitment
0.25), measured in the same process, same threads, same input size. Two settings:

* ``speech``: the SQ-VAE paper's speech setting, 52 segments x 16 latent frames, K=512, d=64
* ``scale``:  52 x 64 latent frames, K=4096, d=64

Time: one training step = forward + backward from ``loss + <z_q, g>`` with a fixed random
``g`` (a stand-in decoder). Steps of the quantizer and of the peer are *interleaved*
(q, peer, q, peer, ...), so that load from other processes on a shared machine hits both
alike, and the peer's time is printed on every row. Reported: the minimum (the cost with
the least interference; the headline ratio) and the median of ``--repeats`` steps each.

Peak memory: ``torch.profiler`` with ``profile_memory=True`` records every CPU tensor
allocation and free of one step; the running sum of these events, in time order, gives the
peak of tensor memory allocated *during* the step above what existed before it (inputs and
parameters excluded, autograd's saved tensors included). It is exact at tensor level and
ignores allocator caching / fragmentation. For scale, the header prints the size of one
float32 (N, K) matrix and of the (N, d, K) tensor a broadcast distance would need.

    python bench/quantizers.py --threads 2
    python bench/quantizers.py --settings speech --quantizers sq_gauss1 vq_ema --repeats 20
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

logger = logging.getLogger("bench.quantizers")

SETTINGS = {
    "speech": dict(batch=52, frames=16, num_codes=512, code_dim=64),
    "scale": dict(batch=52, frames=64, num_codes=4096, code_dim=64),
}
PEER = "vector_quantize_pytorch.VectorQuantize(EMA)"


class Case:
    """One quantizer (or the peer) with its input, ready to run training steps."""

    def __init__(self, name: str, cfg: dict, seed: int = 0):
        torch.manual_seed(seed)
        b, t, k, d = cfg["batch"], cfg["frames"], cfg["num_codes"], cfg["code_dim"]
        self.name = name
        if name == PEER:
            from vector_quantize_pytorch import VectorQuantize

            self.module = VectorQuantize(dim=d, codebook_size=k, decay=0.99, commitment_weight=0.25)
            width = d
        else:
            from speechsq.quantizers import StepContext, build_quantizer

            self.module = build_quantizer(name, num_codes=k, code_dim=d)
            self.ctx = StepContext(temperature=1.0)
            width = self.module.input_dim
        self.module.train()
        self.z = torch.randn(b, t, width, requires_grad=True)
        self.g = torch.randn(b, t, d)

    def step(self) -> None:
        self.z.grad = None
        self.module.zero_grad(set_to_none=True)
        if self.name == PEER:
            quantized, _, loss = self.module(self.z)
            total = loss.sum() + (quantized * self.g).sum()
        else:
            out = self.module(self.z, None, self.ctx)
            total = out.loss + (out.z_q * self.g).sum()
        if total.requires_grad:
            total.backward()

    def timed_step(self) -> float:
        start = time.perf_counter()
        self.step()
        return (time.perf_counter() - start) * 1e3

    def peak_step_mib(self) -> float:
        """Peak of (allocated - freed) CPU tensor bytes during one step, from profiler events."""
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        # the raw allocator events (+bytes on allocation, -bytes on free), in time order
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
        running = peak = 0
        for _, nbytes in events:
            running += nbytes
            peak = max(peak, running)
        return peak / 2**20


def measure(name: str, cfg: dict, peer: Case, warmup: int, repeats: int) -> dict:
    try:
        case = Case(name, cfg)
        for _ in range(warmup):
            case.step()
        peak = case.peak_step_mib()
        own, other = [], []
        for _ in range(repeats):
            own.append(case.timed_step())
            other.append(peer.timed_step())
    except Exception as error:  # a broken quantizer must not hide the others' numbers
        logger.warning("%s failed: %s", name, error)
        return {"name": name, "error": f"{type(error).__name__}: {error}"}
    return {
        "name": name,
        "min": min(own),
        "median": statistics.median(own),
        "peer_min": min(other),
        "peer_median": statistics.median(other),
        "peak_mib": peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--quantizers", nargs="+", default=None, help="registered names (default: all but identity)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from speechsq.quantizers import list_quantizers

    torch.set_num_threads(args.threads)
    names = args.quantizers or [n for n in list_quantizers() if n != "identity"]
    print(
        f"CPU, {args.threads} threads, this machine; torch {torch.__version__}; "
        f"min and median of {args.repeats} fwd+bwd steps, interleaved with the peer's"
    )
    for setting in args.settings:
        cfg = SETTINGS[setting]
        n, k, d = cfg["batch"] * cfg["frames"], cfg["num_codes"], cfg["code_dim"]
        print(
            f"\n### {setting}: B={cfg['batch']} x T={cfg['frames']} (N={n}), K={k}, d={d}; "
            f"one float32 (N,K) = {n * k * 4 / 2**20:.1f} MiB, an (N,d,K) tensor = {n * d * k * 4 / 2**20:.0f} MiB\n"
        )
        peer = Case(PEER, cfg)
        for _ in range(args.warmup):
            peer.step()
        peer_peak = peer.peak_step_mib()
        print(
            "| quantizer      | ms min | ms median | peer min | peer median | time/peer (min) | time/peer (median) "
            "| peak MiB | peak/peer |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {PEER} | | | | | 1.00x | 1.00x | {peer_peak:.1f} | 1.00x |")
        for name in names:
            row = measure(name, cfg, peer, args.warmup, args.repeats)
            if "error" in row:
                print(f"| {name} | failed: {row['error'][:70]} | | | | | | | |")
            else:
                print(
                    f"| {name:<14} | {row['min']:.2f} | {row['median']:.2f} | {row['peer_min']:.2f} | {row['peer_median']:.2f} "
                    f"| {row['min'] / row['peer_min']:.2f}x | {row['median'] / row['peer_median']:.2f}x "
                    f"| {row['peak_mib']:.1f} | {row['peak_mib'] / peer_peak:.2f}x |"
                )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
