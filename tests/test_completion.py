"""Completion markers, atomic writes and the one-line error policy of the command line."""

import errno
import json
import os
import stat

import pytest

from speechsq import cli
from speechsq.completion import (
    MARKER,
    atomic_write_text,
    begin,
    check_keys,
    keys_digest,
    mark_complete,
    read_completion,
    require_complete,
)
from speechsq.errors import DiskFullError, IncompleteOutputError, MismatchError, SpeechsqError, is_disk_full


def test_digest_is_order_independent_and_exact():
    import hashlib

    assert keys_digest(["b", "a"]) == keys_digest(["a", "b"])
    assert keys_digest(["a", "b"]) == hashlib.sha256(b"a\nb\n").hexdigest()
    assert keys_digest(["a", "b"]) != keys_digest(["a", "b", "c"])


def test_marker_round_trip_and_begin_removes_it(tmp_path):
    out = begin(tmp_path / "units")
    mark_complete(out, "units", ["u2", "u1"], producer="test", frame_shift=0.02)
    marker = require_complete(out, kind="units")
    assert (marker.kind, marker.count, marker.info["frame_shift"]) == ("units", 2, 0.02)
    assert marker.matches(["u1", "u2"]) and not marker.matches(["u1"])
    begin(out)  # rewriting: the directory must stop looking complete at once
    assert not (out / MARKER).exists()
    with pytest.raises(IncompleteOutputError, match="incomplete.*run it again"):
        require_complete(out, remedy="run it again")


def test_require_complete_errors(tmp_path):
    with pytest.raises(IncompleteOutputError, match="does not exist"):
        require_complete(tmp_path / "nope")
    mark_complete(tmp_path, "features", ["a"], producer="test")
    with pytest.raises(MismatchError, match="'features' output, expected 'units'"):
        require_complete(tmp_path, kind="units")
    (tmp_path / MARKER).write_text("{not json")
    with pytest.raises(IncompleteOutputError, match="malformed"):
        read_completion(tmp_path)


def test_check_keys_counts_missing_and_extra():
    check_keys({"a", "b"}, {"a", "b", "c"}, "items", "units")  # extras allowed by default
    with pytest.raises(MismatchError, match=r"1 of the 2 utterances of items are missing from units \(e.g. b\)"):
        check_keys({"a", "b"}, {"a"}, "items", "units")
    with pytest.raises(MismatchError, match=r"1 utterances of units are not in items \(e.g. c\)"):
        check_keys({"a"}, {"a", "c"}, "items", "units", allow_extra=False)


def test_atomic_write_honours_umask_and_keeps_old_content_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    old = os.umask(0o027)
    try:
        atomic_write_text(path, "one")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0666 & ~0027, not mkstemp's 0600

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(DiskFullError, match=f"No space left on device: {path}"):
        atomic_write_text(path, "two")
    assert path.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]  # no temporary file left


def test_is_disk_full_sees_through_wrapping():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos") from inner
    except RuntimeError as err:
        assert is_disk_full(err)
    assert not is_disk_full(ValueError("bad"))


class _Boom:
    def __init__(self, exc):
        self.exc = exc

    def main(self, argv):
        raise self.exc


@pytest.mark.parametrize(
    "exc, status, text",
    [
        (SpeechsqError("items file x.item:3: onset > offset"), 2, "speechsq fake: error: items file x.item:3: onset > offset\n"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"), 2,
         "speechsq fake: error: No such file or directory: /nope\n"),
        (DiskFullError("/exp/last.pt"), 1, "speechsq fake: error: No space left on device: /exp/last.pt\n"),
    ],
)
def test_cli_prints_one_line_for_user_errors(monkeypatch, capsys, exc, status, text):
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_module", "test"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: _Boom(exc))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["fake"]) == status
    assert capsys.readouterr().err == text


def test_cli_debug_and_bugs_keep_the_traceback(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_module", "test"))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: _Boom(SpeechsqError("user")))
    with pytest.raises(SpeechsqError):
        cli.main(["--debug", "fake"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(SpeechsqError):
        cli.main(["fake"])
    monkeypatch.delenv(cli.DEBUG_ENV)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: _Boom(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["fake"])


def test_python_dash_m_speechsq_runs_the_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "speechsq", "--help"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("usage: speechsq [--debug] <command>")
    assert "extract" in out.stdout and "compute-feats" in out.stdout
