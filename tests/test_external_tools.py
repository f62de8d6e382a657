"""The policy for tests that need external tools: fail when missing, skip only on request."""

import pytest

from external_tools import ALLOW_SKIP_ENV, require


def test_available_tool_runs(monkeypatch):
    monkeypatch.setenv(ALLOW_SKIP_ENV, "1")
    assert require(True, "espeak-ng", "apt-get install espeak-ng") is None


def test_missing_tool_fails_by_default(monkeypatch):
    monkeypatch.delenv(ALLOW_SKIP_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="espeak-ng is needed by these tests .*apt-get install espeak-ng"):
        require(False, "espeak-ng", "apt-get install espeak-ng")


@pytest.mark.parametrize("value", ["0", "", "yes", "true"])
def test_only_the_exact_opt_in_skips(monkeypatch, value):
    monkeypatch.setenv(ALLOW_SKIP_ENV, value)
    with pytest.raises(pytest.fail.Exception):
        require(False, "espeak-ng", "apt-get install espeak-ng")


def test_opt_in_skips_only_when_really_absent(monkeypatch):
    monkeypatch.setenv(ALLOW_SKIP_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match=r"espeak-ng is not installed \(SPEECHSQ_ALLOW_SKIP=1\)"):
        require(False, "espeak-ng", "apt-get install espeak-ng")
    # installed but broken (the binary is there, the library does not load): still a failure
    with pytest.raises(pytest.fail.Exception):
        require(False, "espeak-ng", "apt-get install espeak-ng", really_absent=False)
