"""Directories that appear complete or not at all: build beside, then rename into place.

A command that writes a whole directory (a Kaldi data dir, a units dir) builds it in a hidden
sibling ``.<name>.partial-<random>`` and, once everything (completion marker included) is
written, swaps it in with two renames: the old directory moves aside to ``.<name>.old-<random>``,
the new one takes its name, the old one is deleted. A crash or a full disk at any point leaves
the old directory intact (or, in the instant between the two renames, no directory): never a
half-written one under the real name. Leftover siblings of a killed run are removed by the
next run into the same place (two commands writing the same directory at once are not
supported).

The staged directory gets the permissions the umask gives a new directory, not
``mkdtemp``'s 0700, so colleagues can read the outputs on a shared machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from speechsq.completion import current_umask
from speechsq.errors import DiskFullError, SpeechsqError, is_disk_full


class OutputDirError(SpeechsqError, FileExistsError):
    """The output path exists and is not a directory this command may replace."""


def _leftovers(final: Path) -> list[Path]:
    if not final.parent.is_dir():
        return []
    prefixes = (f".{final.name}.partial-", f".{final.name}.old-")
    return [p for p in final.parent.iterdir() if p.name.startswith(prefixes)]


@contextmanager
def staged_directory(final: str | Path, replaceable: Callable[[Path], bool] | None = None,
                     what: str = "output") -> Iterator[Path]:
    """Yield an empty staging directory; on success rename it to ``final`` (replacing it).

    ``replaceable(final)`` decides whether an existing, non-empty ``final`` may be replaced
    (e.g. "it holds a units dir's files"); when it says no, :class:`OutputDirError` is raised
    before anything is written, so a mistyped ``--out`` never deletes unrelated files.
    On any error the staging directory is removed; a full disk becomes
    :class:`~speechsq.errors.DiskFullError` naming ``final``.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise OutputDirError(f"{final} exists and is not a directory; choose another {what} path")
    if final.is_dir() and any(final.iterdir()) and replaceable is not None and not replaceable(final):
        raise OutputDirError(
            f"{final} exists and does not look like a {what} directory (refusing to replace it); "
            "remove it or choose another path"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    for leftover in _leftovers(final):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        yield staging
        swap_into_place(staging, final)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(final) from err
        raise


def swap_into_place(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is moved aside first and deleted after."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old)  # replaces the empty placeholder directory
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_directory(final: str | Path) -> None:
    """Remove an output directory the way :func:`swap_into_place` replaces one (rename first,
    so no half-deleted directory is ever visible under its name)."""
    final = Path(final)
    if not final.exists():
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, old)
    shutil.rmtree(old, ignore_errors=True)
