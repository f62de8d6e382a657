"""The reference ABX implementation (zerospeech-libriabx2, in the ``bench`` extra) for tests.

Tests that compare with it must fail, not skip, once the README's set-up has installed it:
they skip only when the distribution is absent, and an installed but broken package fails.
"""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest

PEER_DISTRIBUTION = "zerospeech-libriabx2"


def require_peer_module(name: str):
    """Import ``name`` from the peer's distribution (skip only if it is not installed)."""
    try:
        importlib.metadata.version(PEER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{PEER_DISTRIBUTION} is not installed (pip install -e '.[bench]')")
    return importlib.import_module(name)  # installed: an ImportError here is a failure
