"""Multi-process data parallelism (``torchrun``), the parts the trainer needs.

Launch::

    torchrun --nproc_per_node 2 -m speechsq.training.cli experiment=paper data.feats_dir=...

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``;
:func:`init_from_env` starts the process group with **nccl on CUDA and gloo on CPU**.

What stays consistent across the processes, and how:

* parameters: DistributedDataParallel broadcasts rank 0's at wrap time and averages gradients,
  so with the per-example losses (a mean over each process's equal share of the global batch)
  one update equals the single-process update on the combined batch;
* quantizer codebook statistics (EMA counts and sums, usage for code resets) are summed over
  the processes by the quantizers themselves (``speechsq.quantizers.functional.all_reduce_sum_``)
  inside their forward, so every replica applies the same codebook update;
* other buffers (BatchNorm running statistics): DDP's ``broadcast_buffers`` copies rank 0's
  buffers to every process at each forward, so the replicas never drift apart;
* BatchNorm batch statistics: on CUDA the model is converted to ``SyncBatchNorm``
  (``training.sync_batchnorm``, default true), so the statistics are those of the global batch,
  as in single-GPU training. SyncBatchNorm has no CPU implementation; on CPU each process
  normalises with its own shard's statistics (the only difference from one process; use
  ``model.norm=group`` where an exact match matters);
* the closed-form Gaussian likelihood uses each process's shard MSE (see likelihoods.gaussian);
* the checkpoint holds every process's batch-source and RNG states (gathered to rank 0), so a
  resumed run with the same number of processes continues exactly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistContext:
    """Read the torchrun environment and start the process group (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        log.info("process group: %s, rank %d of %d", backend, rank, world_size)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, sync_batchnorm: bool = True,
               find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` (the model itself for one process)."""
    if not ctx.enabled:
        return model
    if sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.info("BatchNorm uses per-process batch statistics (SyncBatchNorm needs CUDA)")
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every process (one all-reduce; no-op for one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over the processes (no-op for one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` for one process)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
