"""The errors a user can fix, and how the command line shows them.

Every error that means "your input, your configuration or your files are not what this
command needs" derives from :class:`SpeechsqError`. The ``speechsq`` command prints such an
error as **one line** (``speechsq <command>: error: <message>``) and exits with status 2;
the traceback is shown only with ``speechsq --debug <command> ...`` or ``SPEECHSQ_DEBUG=1``.
Anything else that escapes a command is a bug and keeps its traceback.

A message names the file, field or utterance at fault and, where one exists, the fix
("run `speechsq extract` again", "pass --items PATH"). Domain errors keep their own class
(``ConfigError``, ``ItemFileError``, ``AudioProblem``, ...) so code and tests can catch them
precisely; they also derive from the builtin they used to be (``ValueError``,
``FileNotFoundError``), so existing ``except ValueError`` clauses keep working.
"""

from __future__ import annotations

import errno
from pathlib import Path


class SpeechsqError(Exception):
    """An error caused by the user's input, configuration or files (CLI: one line, exit 2)."""

    exit_code = 2


class IncompleteOutputError(SpeechsqError, FileNotFoundError):
    """An output directory that was never finished (no completion marker, or a stale one)."""


class MismatchError(SpeechsqError, ValueError):
    """Inputs that do not belong together (different utterance sets, models, sample rates)."""


class DiskFullError(SpeechsqError, OSError):
    """No space left on the device while writing ``path`` (nothing complete was replaced)."""

    exit_code = 1

    def __init__(self, path: str | Path, detail: str = ""):
        self.path = str(path)
        message = f"No space left on device: {path}"
        if detail:
            message += f" ({detail})"
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:  # OSError's str would prefix "[Errno 28]"
        return self.args[1]


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, including torch's serialisation error that hides it."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if "No space left on device" in text or "file write failed" in text:
            return True
        err = err.__cause__ or err.__context__
    return False
