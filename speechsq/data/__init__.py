"""Batch sources that feed the trainer, selected by name (``cfg.data.name``).

A batch source is any object with (docs/ARCHITECTURE.md section 5)::

    next_batch() -> dict[str, Tensor]     # one training batch for this process
    state_dict() -> dict                  # its RNG / position, checkpointed by the trainer
    load_state_dict(state) -> None        # so a resumed run replays the same batches

and optionally::

    model_overrides() -> dict             # model options that come from the data, merged into
                                          # cfg.model before the model is built and saved with
                                          # the resolved config (speech: n_speakers, speakers)
    write_metadata(exp_dir) -> None       # human-readable files for the experiment directory

Register a factory that builds one from ``cfg.data`` for one data-parallel process::

    @BATCH_SOURCES.register("my_data")
    def build_my_source(cfg_data, *, rank: int, world_size: int, seed: int) -> BatchSource: ...

``cfg.data.batch_size`` is the *global* batch; each of the ``world_size`` processes draws
``batch_size // world_size`` examples from its own shard.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from torch import Tensor

from speechsq.registry import Registry


@runtime_checkable
class BatchSource(Protocol):
    def next_batch(self) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


BatchSourceFactory = Callable[..., BatchSource]

BATCH_SOURCES: Registry[BatchSourceFactory] = Registry("batch source")


def build_batch_source(cfg_data: Any, *, rank: int = 0, world_size: int = 1, seed: int = 0) -> BatchSource:
    """Build ``cfg_data.name`` for process ``rank`` of ``world_size``."""
    name = cfg_data.get("name") if hasattr(cfg_data, "get") else None
    if name is None:
        raise ValueError(f"data config needs a name; known batch sources: {', '.join(BATCH_SOURCES.names())}")
    try:
        factory = BATCH_SOURCES.get(str(name))
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    return factory(cfg_data, rank=rank, world_size=world_size, seed=seed)


def per_process_batch_size(batch_size: int, world_size: int) -> int:
    """The global batch split evenly over the processes (a clear error otherwise)."""
    batch_size, world_size = int(batch_size), int(world_size)
    if batch_size < 1:
        raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
    if batch_size % world_size:
        raise ValueError(
            f"data.batch_size={batch_size} (the global batch) must be divisible by the number of processes ({world_size})"
        )
    return batch_size // world_size


def _import_source_modules() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_source_modules()

__all__ = ["BATCH_SOURCES", "BatchSource", "build_batch_source", "per_process_batch_size"]
