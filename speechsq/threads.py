"""How many CPU threads a job uses, chosen on purpose.

Torch's default (one intra-op thread per core) collapses when anything else runs on the
machine: with 2 threads on a 2-core machine and one other busy process, a mini training
step took 100x longer, because every parallel region waits for its slowest thread. The
policy here, as Kaldi/ESPnet's ``OMP_NUM_THREADS=1`` per job:

* an explicit number wins (``training.num_threads``, ``--threads``);
* else ``SPEECHSQ_THREADS``, else ``OMP_NUM_THREADS`` from the environment (the recipes set
  it per job to ``cores // parallel jobs``);
* else ``cores // SPEECHSQ_JOBS`` (default 1 job), at least 1.

:func:`configure_threads` applies the choice to torch (and to the BLAS/OpenMP pools of
worker processes started afterwards, through the environment).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

THREAD_ENV = ("SPEECHSQ_THREADS", "OMP_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _positive_int(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() != str(n):
        from speechsq.errors import SpeechsqError

        raise SpeechsqError(f"{what} must be a positive integer or 'auto', got {value!r}")
    return n


def resolve_threads(requested: int | str | None = "auto") -> int:
    """The number of intra-op threads for this job (see the module docstring)."""
    if requested not in (None, "auto", ""):
        return _positive_int(requested, "threads")
    for name in THREAD_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return _positive_int(value, name)
    jobs = _positive_int(os.environ.get("SPEECHSQ_JOBS", "1").strip() or "1", "SPEECHSQ_JOBS")
    return max(1, available_cores() // jobs)


def configure_threads(requested: int | str | None = "auto") -> int:
    """Set torch's intra-op threads (and the environment of later child processes)."""
    import torch

    n = resolve_threads(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    log.debug("using %d intra-op thread(s)", n)
    return n
