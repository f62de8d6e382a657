"""Data parallelism: 2 gloo CPU processes give the same update as one process on the
combined batch, and EMA codebooks stay identical across the replicas.

The model uses ``norm=group`` (per-example statistics; BatchNorm's batch statistics are
per process on CPU, see speechsq.training.distributed) and jitter 0, and deterministic
quantizers, so the only difference between the runs is floating-point summation order.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from speechsq.likelihoods.gaussian import FixedVarianceGaussian
from speechsq.models.speech import SpeechVQVAE
from speechsq.quantizers import build_quantizer
from speechsq.training import Trainer, TrainerConfig
from speechsq.training import distributed as D

pytestmark = pytest.mark.ddp

GLOBAL_BATCH = 8
# a few steps only: Adam divides each gradient by its own running RMS, so in channels whose
# gradient is at rounding level (dying ReLUs) summation-order noise grows into visible
# differences over many steps, although every single step matches to ~1e-7
STEPS = 3


def make_model(quantizer: str) -> SpeechVQVAE:
    torch.manual_seed(0)
    q = build_quantizer(quantizer, num_codes=8, code_dim=4)
    return SpeechVQVAE(q, FixedVarianceGaussian(0.5), n_speakers=3, n_mels=80, encoder_channels=16, norm="group",
                       speaker_dim=4, decoder_hidden=8, decoder_layers=1, jitter=0.0)


class ShardedFixedBatches:
    """Batch ``n`` is the same global batch for every run; process ``rank`` takes its slice."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size, self.n = rank, world_size, 0

    def next_batch(self):
        g = torch.Generator().manual_seed(100 + self.n)
        self.n += 1
        feats = torch.rand(GLOBAL_BATCH, 80, 34, generator=g)
        speaker = torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)
        per = GLOBAL_BATCH // self.world_size
        part = slice(self.rank * per, (self.rank + 1) * per)
        return {"feats": feats[part], "speaker": speaker[part], "lengths": torch.full((per,), 34)}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def train(quantizer, exp_dir, rank=0, world_size=1):
    ctx = D.init_from_env("cpu") if world_size > 1 else D.DistContext()
    config = TrainerConfig(steps=STEPS, lr=1e-2, checkpoint_every=STEPS, log_every=STEPS, device="cpu", progress=False)
    trainer = Trainer(make_model(quantizer), ShardedFixedBatches(ctx.rank, ctx.world_size), config, exp_dir, dist_ctx=ctx)
    trainer.fit()
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


def _worker(rank, world_size, port, quantizer, exp_dir, out_dir):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        state = train(quantizer, exp_dir, rank, world_size)
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        D.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("quantizer", ["vq", "vq_ema"])
def test_two_processes_match_one_process_on_the_combined_batch(quantizer, tmp_path):
    single = train(quantizer, tmp_path / "single")
    mp.spawn(_worker, args=(2, _free_port(), quantizer, str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key, value in single.items():
        # the replicas are bit-identical (same averaged gradients, same all-reduced EMA statistics) ...
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        # ... and equal to the single-process run up to summation order
        torch.testing.assert_close(ranks[0][key], value, atol=1e-5, rtol=1e-4, msg=key)
    moved = make_model(quantizer).state_dict()
    assert not torch.allclose(moved["decoder.out.weight"], single["decoder.out.weight"])
    if quantizer == "vq_ema":  # the EMA codebook moved, identically everywhere
        codebook = [k for k in single if "codebook" in k or "embed" in k]
        assert codebook and any(not torch.equal(moved[k], single[k]) for k in codebook)


@pytest.mark.slow
def test_torchrun_cli_two_processes(tmp_path):
    """``torchrun --nproc_per_node 2 -m speechsq.training.cli ...`` end to end on CPU (gloo)."""
    import subprocess
    import sys

    from test_trainer import TINY, write_feats

    from speechsq.training import load_checkpoint

    feats = write_feats(tmp_path / "feats", {f"s{s}_{i}": 80 for s in range(2) for i in range(4)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "speechsq.training.cli", "experiment=mini", f"data.feats_dir={feats}", f"exp_dir={tmp_path / 'exp'}",
           *TINY, "training.steps=4", "training.checkpoint_every=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "exp" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2 and len(ckpt["processes"]) == 2
    # each process drew its own shard with its own generator
    states = [p["batch_source"]["rng"]["state"]["state"] for p in ckpt["processes"]]
    assert states[0] != states[1]


# ----- the validation pass: each process validates its shard, the means are over all examples ---
EXAMPLES = torch.arange(10, dtype=torch.float32) ** 2


class ShardedExamples:
    """Held-out examples ``rank::world_size`` in batches of 3 (uneven shards and batches)."""

    def __init__(self, rank: int, world_size: int):
        self.values = EXAMPLES[rank::world_size]
        self.examples = len(self.values)

    def batches(self):
        for start in range(0, len(self.values), 3):
            yield {"x": self.values[start : start + 3]}


class MeanOfX(torch.nn.Module):
    def forward(self, batch, ctx):
        from speechsq.models.base import ModelOutput

        return ModelOutput(loss=batch["x"].mean(), metrics={"max": batch["x"].max()})


def _validation_worker(rank, world_size, port, out_dir):
    from speechsq.quantizers import StepContext
    from speechsq.training.validation import run_validation

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        ctx = D.init_from_env("cpu")
        result = run_validation(MeanOfX(), ShardedExamples(ctx.rank, ctx.world_size).batches(), StepContext(),
                                torch.device("cpu"), step=1, dist_ctx=ctx)
        torch.save({"examples": result.examples, "values": result.values}, os.path.join(out_dir, f"valid{rank}.pt"))
    finally:
        D.shutdown()


def test_validation_means_do_not_depend_on_the_number_of_processes(tmp_path):
    from speechsq.quantizers import StepContext
    from speechsq.training.validation import run_validation

    single = run_validation(MeanOfX(), ShardedExamples(0, 1).batches(), StepContext(), torch.device("cpu"), step=1)
    assert single.examples == 10 and single.loss == pytest.approx(float(EXAMPLES.mean()), rel=1e-6)
    mp.spawn(_validation_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"valid{rank}.pt")
        assert got["examples"] == 10
        assert got["values"]["loss"] == pytest.approx(single.loss, rel=1e-7)  # float32 batch means
        # the max is averaged over batches weighted by their size, so it depends on how the shards are batched:
        # rank 0 holds 0, 4, 16 | 36, 64 and rank 1 holds 1, 9, 25 | 49, 81
        assert got["values"]["metrics/max"] == pytest.approx((3 * 16 + 2 * 64 + 3 * 25 + 2 * 81) / 10, rel=1e-7)
