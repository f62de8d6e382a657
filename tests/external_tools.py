"""Tests that need an external tool fail, not skip, when it is missing.

The README set-up installs espeak-ng (and the ``bench`` extra), so on a set-up machine, CI
included, a missing tool is a broken installation that must show up as a failure. A test
module may be skipped only where the tool is really absent **and** the person running the
tests says so explicitly with ``SPEECHSQ_ALLOW_SKIP=1``::

    from external_tools import require_espeak
    require_espeak()            # at module level, before the tests
"""

from __future__ import annotations

import os
import shutil

import pytest

ALLOW_SKIP_ENV = "SPEECHSQ_ALLOW_SKIP"


def require(available: bool, what: str, install: str, really_absent: bool | None = None) -> None:
    """Return if ``available``; otherwise skip the module when ``really_absent`` (default:
    not available) and ``SPEECHSQ_ALLOW_SKIP=1``, else fail with how to install it."""
    if available:
        return
    absent = (not available) if really_absent is None else really_absent
    if absent and os.environ.get(ALLOW_SKIP_ENV, "").strip() == "1":
        pytest.skip(f"{what} is not installed ({ALLOW_SKIP_ENV}=1)", allow_module_level=True)
    pytest.fail(f"{what} is needed by these tests and is not usable: {install} "
                f"(only on a machine without it: set {ALLOW_SKIP_ENV}=1 to skip them)", pytrace=False)


def require_espeak() -> None:
    """espeak-ng for the embedded corpus: the library must load; a skip needs the binary absent too."""
    from speechsq.data_prep.espeak import Espeak, EspeakError

    try:
        Espeak()
        ok, problem = True, ""
    except EspeakError as err:
        ok, problem = False, str(err)
    require(ok, f"espeak-ng ({problem})" if problem else "espeak-ng", "apt-get install espeak-ng (README set-up)",
            really_absent=shutil.which("espeak-ng") is None)


def require_module(name: str, extra: str):
    """Import ``name`` from an extra that the README set-up installs (``bench``, ``fid``):
    missing is a failure, a skip only with SPEECHSQ_ALLOW_SKIP=1."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        require(False, f"{name} ({err})", f"bash scripts/setup.sh (installs the `{extra}` extra)")
