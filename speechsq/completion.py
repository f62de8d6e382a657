"""Completion markers: an output directory is usable only once its marker exists.

Every command that writes a directory of results (features, units, evaluation outputs)
follows one protocol, so that a consumer can never score partial or mismatched work:

1. :func:`begin` before the first file is written: it removes an old marker, so a directory
   that is being rewritten never looks complete;
2. the outputs are written;
3. :func:`mark_complete` **last**: ``complete.json`` with the kind of output, the number of
   entries and a digest of their sorted keys (utterance ids), written atomically.

Consumers call :func:`require_complete`, which fails with a one-line
:class:`~speechsq.errors.IncompleteOutputError` naming the directory and the command that
makes it, and compare the utterances they expect with :func:`check_keys`, which fails with
counts and examples (:class:`~speechsq.errors.MismatchError`).

``complete.json``::

    {"kind": "units", "count": 682, "keys_sha256": "...", "producer": "speechsq extract",
     "version": "0.1.0", "finished": "2026-12-02T12:00:00+00:00", ...extra fields}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from speechsq.errors import DiskFullError, IncompleteOutputError, MismatchError, is_disk_full

MARKER = "complete.json"


def keys_digest(keys: Iterable[str]) -> str:
    """SHA-256 of the sorted keys, one per line (order-independent)."""
    h = hashlib.sha256()
    for key in sorted(keys):
        h.update(key.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` with ``write(file)`` through a temporary file and ``os.replace``.

    On failure (a full disk included) ``path`` keeps its old content and no temporary file
    is left behind; a full disk raises :class:`~speechsq.errors.DiskFullError` naming ``path``.
    The file gets the permissions the umask gives a new file (not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err):
            raise DiskFullError(path) from err
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass
class Completion:
    """The parsed marker of a complete directory."""

    directory: Path
    kind: str
    count: int
    keys_sha256: str
    info: dict = field(default_factory=dict)

    def matches(self, keys: Iterable[str]) -> bool:
        keys = list(keys)
        return len(keys) == self.count and keys_digest(keys) == self.keys_sha256


def begin(directory: str | Path) -> Path:
    """Start (re)writing ``directory``: create it and remove any old completion marker."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).unlink(missing_ok=True)
    return directory


def mark_complete(directory: str | Path, kind: str, keys: Iterable[str], producer: str, **info: Any) -> Path:
    """Write ``complete.json`` (atomically, last) for the entries ``keys`` of ``directory``."""
    from speechsq import __version__

    keys = list(keys)
    record = {
        "kind": kind,
        "count": len(keys),
        "keys_sha256": keys_digest(keys),
        "producer": producer,
        "version": __version__,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **info,
    }
    return atomic_write_json(Path(directory) / MARKER, record)


def read_completion(directory: str | Path) -> Completion | None:
    """The marker of ``directory``, or None when there is none (malformed markers raise)."""
    path = Path(directory) / MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return Completion(Path(directory), str(record["kind"]), int(record["count"]), str(record["keys_sha256"]), record)
    except (ValueError, KeyError, TypeError) as err:
        raise IncompleteOutputError(f"{path} is malformed ({err}); the output is not known to be complete: make it again") from None


def require_complete(directory: str | Path, kind: str | None = None, remedy: str = "") -> Completion:
    """The marker of ``directory``; a one-line error when the directory is missing or unfinished.

    ``remedy`` says how to make the directory (e.g. "run `speechsq extract` again").
    """
    directory = Path(directory)
    hint = f"; {remedy}" if remedy else ""
    if not directory.is_dir():
        raise IncompleteOutputError(f"{directory} does not exist{hint}")
    marker = read_completion(directory)
    if marker is None:
        raise IncompleteOutputError(
            f"{directory} is incomplete (no {MARKER}: the command that writes it failed or is still running){hint}"
        )
    if kind is not None and marker.kind != kind:
        raise MismatchError(f"{directory} holds {marker.kind!r} output, expected {kind!r}{hint}")
    return marker


def check_keys(expected: Iterable[str], found: Iterable[str], expected_from: str, found_in: str,
               allow_extra: bool = True) -> None:
    """Fail with counts when ``found`` lacks any of ``expected`` (or has extras, unless allowed)."""
    expected, found = set(expected), set(found)
    missing = sorted(expected - found)
    extra = sorted(found - expected)
    if missing or (extra and not allow_extra):
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the {len(expected)} utterances of {expected_from} are missing from {found_in} "
                         f"(e.g. {', '.join(missing[:3])})")
        if extra and not allow_extra:
            parts.append(f"{len(extra)} utterances of {found_in} are not in {expected_from} (e.g. {', '.join(extra[:3])})")
        raise MismatchError("; ".join(parts))
