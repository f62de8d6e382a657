"""Runs must not destroy each other or themselves: the run lock, resume as the default (with
fallback past damaged checkpoints), restart that keeps the old run, compatibility checked
before anything is written, leftovers of kills, umask, and a full disk."""

import errno
import json
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from speechsq import cli
from speechsq.errors import DiskFullError, MismatchError
from speechsq.training import build_run, load_checkpoint
from speechsq.training import checkpoint as checkpoint_module
from speechsq.training import lock as lock_module
from speechsq.training.lock import RunLock, RunLockedError
from speechsq.training.rundir import ResumeError, RunDir
from test_trainer import TINY, ToySource, feats_dir, tiny_cfg, toy_trainer  # noqa: F401 - feats_dir is a fixture


def _train(feats, exp, *extra):
    trainer = build_run(tiny_cfg(feats, exp, "quantizer=vq_ema", "training.checkpoint_every=2", "training.log_every=2",
                                 *extra))
    start = trainer.step
    trainer.fit()
    return start


def _speechsq(*args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "speechsq", *args], env=env, text=True, **kwargs)


# ----- the lock ------------------------------------------------------------------------------
def test_a_second_run_into_the_same_exp_dir_fails_at_once_and_a_killed_holder_does_not_block(feats_dir, tmp_path,
                                                                                                caplog, capsys):
    exp = tmp_path / "exp"
    args = ["train", "experiment=mini", f"data.feats_dir={feats_dir}", f"exp_dir={exp}", *TINY,
            "training.steps=1000000", "training.checkpoint_every=1000000", "training.log_every=1000000"]
    holder = _speechsq(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        record = {}
        deadline = time.time() + 120
        while record.get("pid") != holder.pid:
            assert time.time() < deadline and holder.poll() is None, "the first run never took the lock"
            time.sleep(0.2)
            text = (exp / "train.lock").read_text() if (exp / "train.lock").is_file() else ""
            record = json.loads(text) if text.strip() else {}
        assert record["host"] == socket.gethostname() and "train" in record["command"]

        # the second run: this process (the command line's code path, in-process to save a start-up)
        assert cli.main([*args[:-3], "training.steps=2"]) == 2
        assert capsys.readouterr().err == (
            f"speechsq train: error: {exp} is in use by another training run (pid {holder.pid} on host "
            f"{record['host']}, started {record['started']}: {record['command']}); wait for it to finish, or train "
            "into another exp_dir\n"
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # the killed run left its record; the kernel released its flock: the next run takes over
    assert json.loads((exp / "train.lock").read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="speechsq"):
        _train(feats_dir, exp, "training.steps=2")
    assert f"taking over the lock of an earlier run that ended without releasing it (pid {holder.pid} on host" in caplog.text
    assert load_checkpoint(exp / "checkpoints" / "last.pt")["step"] == 2
    assert (exp / "train.lock").read_text() == ""  # released cleanly at the end


def test_the_lock_is_held_by_an_unfitted_run_and_released_by_fit(feats_dir, tmp_path):
    trainer = build_run(tiny_cfg(feats_dir, tmp_path, "training.steps=2", "training.checkpoint_every=2"))
    with pytest.raises(RunLockedError, match=rf"^{tmp_path} is in use by another training run \(pid {os.getpid()} on host "):
        build_run(tiny_cfg(feats_dir, tmp_path, "training.steps=2"))
    trainer.fit()
    RunLock(tmp_path).acquire().release()  # free again


def test_without_flock_a_record_of_a_dead_process_is_stale(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    (tmp_path / "train.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": host, "started": "then"}))
    lock = RunLock(tmp_path).acquire()  # that process is gone: taken over
    assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(RunLockedError, match=rf"in use by another training run \(pid {os.getpid()} on host {host}"):
        RunLock(tmp_path).acquire()  # this process is alive
    lock.release()
    for pid in (1, int(dead.stdout)):  # another host's pid says nothing about this host's processes
        (tmp_path / "train.lock").write_text(json.dumps({"pid": pid, "host": "elsewhere", "started": "then"}))
        with pytest.raises(RunLockedError, match=rf"pid {pid} on host elsewhere.*if that run is certainly over, remove .*train\.lock"):
            RunLock(tmp_path).acquire()


# ----- resume is the default, and never restarts over checkpoints ------------------------------
def test_resume_auto_is_the_default_and_skips_damaged_checkpoints(feats_dir, tmp_path, caplog):
    exp = tmp_path / "exp"
    ckpts = exp / "checkpoints"
    assert _train(feats_dir, exp, "training.steps=4") == 0
    assert _train(feats_dir, exp, "training.steps=6") == 4  # a plain re-run continues
    (ckpts / "last.pt").write_bytes((ckpts / "last.pt").read_bytes()[:100])  # truncated by a kill
    with caplog.at_level(logging.WARNING, logger="speechsq"):
        assert _train(feats_dir, exp, "training.steps=8") == 6
    assert f"resume: checkpoint {ckpts / 'last.pt'} cannot be read" in caplog.text
    assert f"resume: continuing from {ckpts / 'step_6.pt'} (step 6; unusable: last.pt)" in caplog.text

    (ckpts / "last.pt").unlink()  # deleted: the step files are still there, and must not be overwritten
    before = {p.name: p.read_bytes() for p in ckpts.glob("step_*.pt")}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speechsq"):
        assert _train(feats_dir, exp, "training.steps=10") == 8
    assert f"resume: continuing from {ckpts / 'step_8.pt'} (step 8; last.pt is missing)" in caplog.text
    assert all((ckpts / name).read_bytes() == data for name, data in before.items())

    # killed between writing step_N.pt and last.pt: the newer step file wins
    (ckpts / "last.pt").write_bytes((ckpts / "step_8.pt").read_bytes())
    assert _train(feats_dir, exp, "training.steps=12") == 10

    for path in ckpts.glob("*.pt"):
        path.write_bytes(b"garbage")
    with pytest.raises(ResumeError, match=r"none of the checkpoints in .* can be loaded \(last.pt, step_12.pt, step_10.pt"
                                          r".*resume=restart"):
        build_run(tiny_cfg(feats_dir, exp, "quantizer=vq_ema"))


def test_restart_moves_the_old_run_aside_and_a_foreign_resume_path_is_refused(feats_dir, tmp_path):
    exp = tmp_path / "exp"
    _train(feats_dir, exp, "training.steps=2")
    old = (exp / "checkpoints" / "step_2.pt").read_bytes()
    other = tmp_path / "other"
    _train(feats_dir, other, "training.steps=2")
    with pytest.raises(ResumeError, match=rf"resume={other}/checkpoints/last.pt: {exp} already holds checkpoints of "
                                          "another run"):
        build_run(tiny_cfg(feats_dir, exp, "quantizer=vq_ema", f"resume={other}/checkpoints/last.pt"))

    assert _train(feats_dir, exp, "training.steps=2", "resume=restart") == 0
    (moved,) = (exp / "replaced").iterdir()
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoints", "config.yaml", "tensorboard", "train.log"]
    assert (moved / "checkpoints" / "step_2.pt").read_bytes() == old  # nothing deleted
    assert load_checkpoint(exp / "checkpoints" / "last.pt")["step"] == 2


def test_a_checkpoint_of_another_model_fails_before_anything_is_written(feats_dir, tmp_path, capsys):
    exp = tmp_path / "exp"
    _train(feats_dir, exp, "training.steps=2")
    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in exp.rglob("*") if p.is_file() and p.name != "train.lock"}
    with pytest.raises(MismatchError, match=(
        rf"^checkpoint {exp}/checkpoints/last.pt does not fit the requested model \(2 key\(s\) differ: "
        r"model.encoder_channels: 16 in the checkpoint, 32 requested; quantizer.num_codes: 8 in the checkpoint, "
        r"16 requested\); train into another exp_dir, or start over here with resume=restart \(the old run is moved to "
        rf"{exp}/replaced\)$")):
        build_run(tiny_cfg(feats_dir, exp, "quantizer=vq_ema", "model.encoder_channels=32", "quantizer.num_codes=16"))
    assert cli.main(["train", "experiment=mini", f"data.feats_dir={feats_dir}", f"exp_dir={exp}", *TINY, "quantizer=vq"]) == 2
    assert capsys.readouterr().err.startswith(f"speechsq train: error: checkpoint {exp}/checkpoints/last.pt does not fit")
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in exp.rglob("*") if p.is_file() and p.name != "train.lock"}
    assert after == written  # config.yaml, speakers.txt, tensorboard, checkpoints: untouched


def test_changed_training_settings_are_logged_on_resume(feats_dir, tmp_path, caplog):
    exp = tmp_path / "exp"
    _train(feats_dir, exp, "training.steps=2")
    with caplog.at_level(logging.WARNING, logger="speechsq"):
        _train(feats_dir, exp, "training.steps=4", "training.lr=0.0005", "seed=7")
    assert ("with settings that differ from the checkpoint's (the optimizer, scheduler and batch-source states continue "
            "from the checkpoint): seed: 1234 in the checkpoint, 7 requested; training.lr: 0.001 in the checkpoint, "
            "0.0005 requested") in caplog.text


# ----- leftovers of kills, permissions, full disk ---------------------------------------------
def test_leftover_temporaries_are_removed_at_start(feats_dir, tmp_path, caplog):
    exp = tmp_path / "exp"
    _train(feats_dir, exp, "training.steps=2")
    leftovers = [exp / "checkpoints" / ".step_4.pt.x1y2z3.tmp", exp / "checkpoints" / ".last.pt.abcdef.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    keep = exp / "checkpoints" / "notes.tmp"
    keep.write_text("not ours")
    with caplog.at_level(logging.INFO, logger="speechsq"):
        _train(feats_dir, exp, "training.steps=4")
    assert ("removed 2 leftover temporary checkpoint file(s) of an interrupted save: .last.pt.abcdef.tmp, "
            ".step_4.pt.x1y2z3.tmp") in caplog.text
    assert not any(p.exists() for p in leftovers) and keep.exists()
    assert "removed 2 leftover temporary checkpoint file(s)" in (exp / "train.log").read_text()  # the set-up is logged too


def test_checkpoints_honour_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        toy_trainer(tmp_path, ToySource(), steps=2).fit()
    finally:
        os.umask(old)
    for name in ("step_2.pt", "last.pt"):
        assert stat.S_IMODE((tmp_path / "checkpoints" / name).stat().st_mode) == 0o664


@pytest.fixture
def full_disk_for(monkeypatch):
    """Temporary checkpoint files whose name contains a marker are written to /dev/full (ENOSPC)."""
    real = tempfile.mkstemp

    def arm(marker):
        def mkstemp(prefix="", suffix="", dir=None):
            fd, name = real(prefix=prefix, suffix=suffix, dir=dir)
            if marker in prefix:
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
            return fd, name

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)  # the module atomic_write uses

    return arm


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, full_disk_for):
    full_disk_for("step_4")
    trainer = toy_trainer(tmp_path, ToySource(), steps=6)
    with pytest.raises(DiskFullError) as caught:
        trainer.fit()
    assert str(caught.value) == f"No space left on device: {tmp_path / 'checkpoints' / 'step_4.pt'}"
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2  # intact
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "step_2.pt"]  # no temporary left
    assert (tmp_path / "train.lock").read_text() == ""  # the lock is released


def test_a_full_disk_is_one_line_from_speechsq_train(feats_dir, tmp_path, capsys, full_disk_for):
    full_disk_for("step_2")
    status = cli.main(["train", "experiment=mini", f"data.feats_dir={feats_dir}", f"exp_dir={tmp_path}", *TINY,
                       "training.steps=2", "training.checkpoint_every=2"])
    assert status == 1
    assert capsys.readouterr().err == f"speechsq train: error: No space left on device: {tmp_path}/checkpoints/step_2.pt\n"


def test_checkpoint_state_survives_the_round_trip_through_plain_data(tmp_path):
    """The numpy RNG state travels as a tensor; restoring it gives the same draws."""
    import numpy as np

    np.random.seed(5)
    np.random.normal(size=3)  # has_gauss may be set
    state = checkpoint_module.rng_state()
    want = np.random.normal(size=4)
    torch.save(state, tmp_path / "rng.pt")
    checkpoint_module.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert np.array_equal(np.random.normal(size=4), want)


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    """step_10.pt is newer than step_9.pt (by name it sorts first): resume picks it, falls back
    to step_9.pt when it is damaged, and pruning keeps the newest by number."""
    ckpts = tmp_path / "checkpoints"
    for step in (2, 9, 10):
        checkpoint_module.atomic_save({"model": {}, "step": step}, ckpts / f"step_{step}.pt")
    assert [p.name for p in checkpoint_module.step_checkpoints(ckpts)] == ["step_2.pt", "step_9.pt", "step_10.pt"]
    state, path = RunDir(tmp_path).newest_loadable()
    assert (state["step"], path.name) == (10, "step_10.pt")
    (ckpts / "step_10.pt").write_bytes(b"garbage")
    state, path = RunDir(tmp_path).newest_loadable()
    assert (state["step"], path.name) == (9, "step_9.pt")
    for step in (10, 11):
        checkpoint_module.atomic_save({"model": {}, "step": step}, ckpts / f"step_{step}.pt")
    checkpoint_module.atomic_save({"model": {}, "step": 11}, ckpts / "last.pt")
    state, path = RunDir(tmp_path).newest_loadable()  # no step file is newer than last.pt
    assert (state["step"], path.name) == (11, "last.pt")
    checkpoint_module.prune_checkpoints(ckpts, keep=2)
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "step_10.pt", "step_11.pt"]
    checkpoint_module.prune_checkpoints(ckpts, keep=0)  # 0: keep all
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "step_10.pt", "step_11.pt"]


def test_a_changed_quantizer_schedule_is_logged_a_changed_quantizer_is_refused(tmp_path, caplog):
    from speechsq.training.rundir import check_compatible

    old = {"model": {"name": "speech"}, "quantizer": {"num_codes": 8, "temperature": {"init": 1.0}, "kl_warmup": {"steps": 5}}}
    new = {"model": {"name": "speech"}, "quantizer": {"num_codes": 8, "temperature": {"init": 2.0}, "kl_warmup": {"steps": 9}}}
    with caplog.at_level(logging.WARNING, logger="speechsq"):
        check_compatible(old, new, tmp_path / "c.pt")  # schedules of the training, not the model
    assert "quantizer.kl_warmup.steps: 5 in the checkpoint, 9 requested; quantizer.temperature.init: 1.0" in caplog.text
    with pytest.raises(MismatchError, match=r"1 key\(s\) differ: quantizer.num_codes: 8 in the checkpoint, 16 requested"):
        check_compatible(old, {**new, "quantizer": {**new["quantizer"], "num_codes": 16}}, tmp_path / "c.pt")


def test_each_process_gets_its_own_random_stream():
    """Rank 0 draws the seed's stream; another rank draws another one (identical jitter and
    Gumbel noise in every data-parallel process would waste the noise)."""
    import numpy as np

    checkpoint_module.seed_everything(5, rank=0)
    rank0 = (torch.rand(4), np.random.random(), random.random())
    assert torch.equal(rank0[0], torch.rand(4, generator=torch.Generator().manual_seed(5)))
    assert rank0[1:] == (np.random.RandomState(5).random_sample(), random.Random(5).random())
    checkpoint_module.seed_everything(5, rank=1)
    rank1 = (torch.rand(4), np.random.random(), random.random())
    assert not torch.equal(rank0[0], rank1[0]) and rank0[1] != rank1[1] and rank0[2] != rank1[2]


def test_a_resume_path_into_the_own_checkpoints_is_accepted_however_it_is_spelled(tmp_path, monkeypatch):
    from speechsq.training.rundir import plan_resume

    exp = RunDir(tmp_path / "exp")
    checkpoint_module.atomic_save({"model": {}, "step": 2}, exp.checkpoints / "step_2.pt")
    checkpoint_module.atomic_save({"model": {}, "step": 3}, tmp_path / "other" / "step_3.pt")
    monkeypatch.chdir(tmp_path)
    for spelled in ("exp/checkpoints/step_2.pt", f"{tmp_path}/exp/checkpoints/../checkpoints/step_2.pt"):
        plan = plan_resume(spelled, exp)
        assert plan.state["step"] == 2 and not plan.move_aside
    with pytest.raises(ResumeError, match="already holds checkpoints of another run"):
        plan_resume(str(tmp_path / "other" / "step_3.pt"), exp)
