import pytest
import torch

from speechsq import threads
from speechsq.errors import SpeechsqError


def test_explicit_then_environment_then_cores_over_jobs(monkeypatch):
    for name in ("SPEECHSQ_THREADS", "OMP_NUM_THREADS", "SPEECHSQ_JOBS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert threads.resolve_threads(3) == 3
    assert threads.resolve_threads("auto") == 8
    monkeypatch.setenv("SPEECHSQ_JOBS", "3")
    assert threads.resolve_threads("auto") == 2  # 8 cores // 3 jobs
    monkeypatch.setenv("SPEECHSQ_JOBS", "16")
    assert threads.resolve_threads("auto") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.resolve_threads("auto") == 4
    monkeypatch.setenv("SPEECHSQ_THREADS", "5")
    assert threads.resolve_threads(None) == 5


@pytest.mark.parametrize("bad", [0, -1, "two", "1.5", 2.5, "+3", "03"])  # 2.5: never truncated to 2
def test_bad_thread_counts_are_one_line_errors(bad):
    with pytest.raises(SpeechsqError, match="positive integer"):
        threads.resolve_threads(bad)


def test_configure_sets_torch_and_child_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored by monkeypatch afterwards
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(2) == 2
        assert torch.get_num_threads() == 2
        import os

        assert os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)
