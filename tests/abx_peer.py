"""The reference ABX implementation (zerospeech-libriabx2, in the ``bench`` extra) for tests.

The README set-up installs it, so tests that compare with it fail when it cannot be
imported (see :mod:`external_tools`): a skip needs the distribution really absent and
``SPEECHSQ_ALLOW_SKIP=1``.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from external_tools import require

PEER_DISTRIBUTION = "zerospeech-libriabx2"


def require_peer_module(name: str):
    """Import ``name`` (``zrc_abx2`` or its ``libri_light_dtw``) from the reference's distribution."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        problem = str(err)
    try:
        importlib.metadata.version(PEER_DISTRIBUTION)
        absent = False
    except importlib.metadata.PackageNotFoundError:
        absent = True
    require(False, f"{PEER_DISTRIBUTION} ({problem})", "pip install -e '.[bench]' (README set-up)", really_absent=absent)
