"""One training run per experiment directory, enforced by a lock file.

Two ``speechsq train`` into the same ``exp_dir`` would overwrite each other's checkpoints
(with different seeds every checkpoint would belong to the last writer while ``config.yaml``
names the other). :class:`RunLock` takes an exclusive ``flock`` on ``<exp_dir>/train.lock``
for the whole run and writes its holder into the file (pid, host, start time, command); a
second run fails at once with one line naming the holder.

The kernel drops an ``flock`` when its process dies, however it dies (``kill -9``
included), so a crashed run never blocks the next one: the lock file that a killed run
leaves behind still names it, and the next run takes the lock over with a log line saying so.
Where the file system does not support ``flock`` (some network file systems), the lock
falls back to the holder record alone: a record from a process of this host that no longer
exists is stale and taken over; one from another host cannot be checked, and the error says
how to remove it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"


class RunLockedError(SpeechsqError, RuntimeError):
    """Another run holds the experiment directory."""


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``with RunLock(exp_dir): ...`` or ``acquire()`` / ``release()``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        self._flock = True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self.held:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.directory} is in use by another training run ({_describe(holder)}); wait for it to finish, "
                "or train into another exp_dir"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            self._flock = False
            self._check_record_without_flock(fd)
        previous = _read_holder(fd)
        if previous:
            log.warning("%s: taking over the lock of an earlier run that ended without releasing it (%s): it was "
                        "killed or crashed", self.directory, _describe(previous))
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _check_record_without_flock(self, fd: int) -> None:
        holder = _read_holder(fd)
        if not holder:
            return
        same_host = holder.get("host") == socket.gethostname()
        if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
            return  # stale: that process is gone
        os.close(fd)
        where = "" if same_host else f"; if that run is certainly over, remove {self.path}"
        raise RunLockedError(f"{self.directory} is in use by another training run ({_describe(holder)}){where}")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty file: released cleanly (the file itself stays, see flock(2))
            if self._flock:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a lock object dropped without release (e.g. a Trainer never fitted)
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "started": "?"}
