"""The shared trainer: exact resume, non-finite losses, atomic checkpoints, gradient clipping
and learning-rate schedules (exact per step), logs, config errors, the speech batch source,
and load_model.

Run directories (lock, resume policy, disk full), checkpoint safety and export, the config
schema and the validation pass have their own files: test_run_dir.py, test_checkpoint_safety.py,
test_config_schema.py, test_validation.py.
"""

import copy
import logging
import math
import os
import stat
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
from torch import nn

from speechsq.data.speech import SpeechDataError, SpeechSegmentSource
from speechsq.models.base import ModelOutput
from speechsq.training import (
    ConfigError, NonFiniteLossError, Trainer, TrainerConfig, atomic_save, build_run, compose_config, load_checkpoint, load_model,
)
from speechsq import cli
from speechsq.training.cli import main as train_main
from speechsq.training.rundir import ResumeError
from speechsq.training.schedules import KLWarmup, PlateauConfig, PlateauSchedule, TemperatureSchedule

N_MELS = 80


def write_feats(root: Path, utterances: dict[str, int], n_mels: int = N_MELS, seed: int = 0) -> Path:
    """A kaldiio feats dir (feats.scp, utt2num_frames, utt2spk) of phone-like synthetic spectra.

    Utterance ids are ``<speaker>_<n>``. Each utterance is a sequence of 4-12 frame 'phones'
    drawn from 8 spectral templates, plus a speaker offset and a little noise.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    templates = rng.uniform(0.1, 0.9, (8, n_mels // 8)).repeat(8, axis=1)[:, :n_mels]
    offsets = {}
    with kaldiio.WriteHelper(f"ark,scp:{root}/feats.ark,{root}/feats.scp") as writer:
        for utt, frames in sorted(utterances.items()):
            spk = utt.split("_")[0]
            offsets.setdefault(spk, rng.normal(0, 0.05, n_mels))
            ids = rng.integers(0, 8, frames // 4 + 1).repeat(rng.integers(4, 12))[:frames]
            ids = np.resize(ids, frames)
            mat = templates[ids] + offsets[spk] + rng.normal(0, 0.02, (frames, n_mels))
            writer[utt] = mat.astype(np.float32)
    (root / "utt2num_frames").write_text("".join(f"{u} {n}\n" for u, n in sorted(utterances.items())))
    (root / "utt2spk").write_text("".join(f"{u} {u.split('_')[0]}\n" for u in sorted(utterances)))
    return root


@pytest.fixture(scope="module")
def feats_dir(tmp_path_factory):
    utts = {f"s{s}_{i:02d}": 60 + 13 * i + 7 * s for s in range(3) for i in range(6)}
    utts["s0_short"] = 20  # shorter than one 34-frame segment: skipped
    return write_feats(tmp_path_factory.mktemp("feats") / "train", utts)


TINY = ["model.encoder_channels=16", "model.speaker_dim=4", "model.decoder_hidden=8", "model.decoder_layers=1",
        "quantizer.num_codes=8", "quantizer.code_dim=4", "data.batch_size=4", "training.device=cpu",
        "training.progress=false"]


def tiny_cfg(feats_dir, exp_dir, *extra):
    return compose_config(["experiment=mini", f"data.feats_dir={feats_dir}", f"exp_dir={exp_dir}", *TINY, *extra])


def _params(path):
    return load_checkpoint(path)["model"]


# ----- exact resume ------------------------------------------------------------------------
def _resume_matches(feats_dir, tmp_path, steps, quantizer):
    common = [f"quantizer={quantizer}", f"training.steps={steps}", f"training.checkpoint_every={steps // 2}",
              "training.log_every=5", "data.preload=false"]
    build_run(tiny_cfg(feats_dir, tmp_path / "straight", *common)).fit()
    build_run(tiny_cfg(feats_dir, tmp_path / "split", *common, f"training.steps={steps // 2}")).fit()
    resumed = build_run(tiny_cfg(feats_dir, tmp_path / "split", *common, "resume=auto"))
    assert resumed.step == steps // 2
    resumed.fit()
    a = _params(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = _params(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and the run really moved: the parameters differ from the half-way checkpoint
    half = _params(tmp_path / "straight" / "checkpoints" / f"step_{steps // 2}.pt")
    assert not torch.equal(a["decoder.out.weight"], half["decoder.out.weight"])


@pytest.mark.parametrize("quantizer", ["sq_gauss1", "vq_ema"])
def test_resume_continues_exactly(feats_dir, tmp_path, quantizer):
    # sq_gauss1 draws Gumbel noise and jitter is on (0.5): RNG states must be restored too;
    # vq_ema carries EMA buffers
    _resume_matches(feats_dir, tmp_path, 40, quantizer)


@pytest.mark.slow
def test_resume_continues_exactly_2k_steps(feats_dir, tmp_path):
    _resume_matches(feats_dir, tmp_path, 2000, "sq_gauss1")


# ----- a generic model: the trainer assumes nothing about speech -----------------------------
class ToyRegression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, batch, ctx):
        err = (self.linear(batch["x"]) - batch["y"]).pow(2).mean()
        reg = 1e-3 * self.linear.weight.pow(2).sum() * ctx.kl_weight
        return ModelOutput(loss=err + reg, terms={"mse": err, "reg": reg}, metrics={"tau": torch.tensor(ctx.temperature)})


class ToySource:
    """y = x . w; at ``poison_at`` (a batch number) the inputs are NaN; ``scales[n]`` multiplies
    batch n's inputs and targets (gradients of very different size); ``stop_at``: raise
    KeyboardInterrupt when batch ``stop_at`` is asked for (a killed run)."""

    W = np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)

    def __init__(self, poison_at=None, scales=None, stop_at=None):
        self.rng = np.random.default_rng(0)
        self.n = 0
        self.poison_at, self.scales, self.stop_at = poison_at, scales or {}, stop_at

    def next_batch(self):
        if self.n + 1 == self.stop_at:
            raise KeyboardInterrupt("killed")
        x = self.rng.normal(size=(8, 3)).astype(np.float32) * self.scales.get(self.n + 1, 1.0)
        y = x @ self.W
        self.n += 1
        if self.n == self.poison_at:
            x[:] = np.nan
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "n": self.n}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.n = state["n"]


def toy_config(**cfg):
    return TrainerConfig(**{"steps": 10, "lr": 0.05, "milestones": (5,), "checkpoint_every": 2, "log_every": 2,
                            "device": "cpu", "progress": False, **cfg})


def toy_trainer(tmp_path, source, model=None, **cfg):
    return Trainer(model or ToyRegression(), source, toy_config(**cfg), tmp_path, run_config={"note": "toy"}, seed=0)


def in_write_order(directory):
    """Zero-pad the writer counter that ends tensorboard event file names, in place.

    Names are ``events.out.tfevents.<time>.<host>.<pid>.<counter>``, the counter counting the
    writers this process opened; tensorboard reads a directory's files in name order, so two
    writers opened in the same second by one process (a killed run and its resumption, in a
    test) are read in the wrong order once the counter passes 9 -> 10, and the older file's
    events then purge the newer one's."""
    for path in Path(directory).glob("events.out.tfevents.*"):
        head, _, counter = path.name.rpartition(".")
        if counter.isdigit() and len(counter) < 8:
            path.rename(path.with_name(f"{head}.{int(counter):08d}"))
    return directory


def scalars(directory, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(in_write_order(directory)), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_generic_model_trains_and_logs(tmp_path):
    trainer = toy_trainer(tmp_path, ToySource(), steps=100, lr=0.1, milestones=(60,), checkpoint_every=50,
                          kl_warmup=KLWarmup("cosine", 20))
    result = trainer.fit()
    assert result.step == 100 and result.metrics["terms/mse"] < 0.01  # y = x.w is learnable: 0.5 x Var(y) = 2.6 at the start
    assert result.metrics["lr"] == 0.05  # halved once, at update 60
    assert result.metrics["kl_weight"] == 1.0
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 100 and ckpt["config"] == {"note": "toy"} and ckpt["format"] == 2
    assert set(ckpt["processes"][0]["rng"]) == {"python", "numpy", "torch"}
    torch.testing.assert_close(ckpt["model"]["linear.weight"], torch.tensor([[1.0, -2.0, 0.5]]), atol=0.02, rtol=0)
    assert "train" in (tmp_path / "train.log").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "terms/mse", "terms/reg", "metrics/tau", "lr", "temperature", "kl_weight", "metrics/grad_norm"} <= tags
    # logged at step s: the value the s-th update used (step index s - 1); tensorboard keeps float32
    temps = scalars(tmp_path / "tensorboard", "temperature")
    assert temps[50] == np.float32(math.exp(-1e-5 * 49))
    assert scalars(tmp_path / "tensorboard", "kl_weight")[10] == np.float32(0.5 * (1 - math.cos(math.pi * 9 / 20)))


def test_non_finite_loss_stops_with_the_step_and_terms_and_keeps_the_last_checkpoint(tmp_path):
    trainer = toy_trainer(tmp_path, ToySource(poison_at=6))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5 .*mse=nan, reg=.*last good checkpoint: .*step_4\.pt"):
        trainer.fit()
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert "non-finite loss at step 5" in (tmp_path / "train.log").read_text()


def test_checkpoint_writes_are_atomic_and_honour_the_umask(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    old_umask = os.umask(0o027)
    try:
        atomic_save({"model": {"w": torch.ones(2)}, "step": 1}, target)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # not mkstemp's 0600: colleagues in the group can read it

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk on fire")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_save({"model": {}, "step": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["step"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
    target.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(target)


def test_a_killed_run_resumes_with_the_same_logged_window(tmp_path):
    """The loss window is checkpointed: the first window logged after a resume covers the same
    updates as the uninterrupted run's and has the same value."""
    common = dict(steps=12, log_every=5, checkpoint_every=7, milestones=())
    toy_trainer(tmp_path / "straight", ToySource(), **common).fit()
    with pytest.raises(KeyboardInterrupt):  # dies asking for batch 9, after the checkpoint at 7 (window 6-7 open)
        toy_trainer(tmp_path / "split", ToySource(stop_at=9), **common).fit()
    resumed = toy_trainer(tmp_path / "split", ToySource(), **common)
    resumed.resume(tmp_path / "split" / "checkpoints" / "last.pt")
    assert resumed.step == 7 and resumed._count == 2
    resumed.fit()
    straight = scalars(tmp_path / "straight" / "tensorboard", "loss")
    split = scalars(tmp_path / "split" / "tensorboard", "loss")
    assert sorted(straight) == sorted(split) == [5, 10, 12]
    assert split == straight  # bit-identical, the window 6-10 included


def test_a_restarted_run_drops_the_events_a_killed_attempt_logged(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # killed asking for batch 4: steps 1-3 logged, no checkpoint yet
        toy_trainer(tmp_path, ToySource(stop_at=4), steps=5, log_every=1, checkpoint_every=10).fit()
    toy_trainer(tmp_path, ToySource(), steps=5, log_every=1, checkpoint_every=10).fit()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(in_write_order(tmp_path / "tensorboard")))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5]  # not 1, 2, 3, 1, 2, ...


# ----- gradient clipping and learning-rate schedules: exact per step --------------------------
def test_clipped_gradients_are_what_adam_applies(tmp_path):
    """Two updates whose gradients differ 10x in size, both clipped to max 0.1: the trainer's
    parameters equal Adam's on the clipped gradients (Adam is scale invariant only for a
    constant scale, so unclipped gradients give different parameters)."""
    torch.manual_seed(0)
    model = ToyRegression()
    reference = copy.deepcopy(model)
    trainer = toy_trainer(tmp_path, ToySource(scales={2: 10.0}), model=model, steps=2, grad_clip=0.1, milestones=(),
                          checkpoint_every=100, log_every=1)
    seen = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(float(torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for g in opt.param_groups for p in g["params"]]))))
    )
    trainer.fit()

    optimizer = torch.optim.Adam(reference.parameters(), lr=0.05, betas=(0.9, 0.999))
    source, norms = ToySource(scales={2: 10.0}), []
    for step in range(2):
        optimizer.zero_grad()
        reference(source.next_batch(), trainer.step_context(step)).loss.backward()
        grads = [p.grad for p in reference.parameters()]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        norms.append(float(norm))
        for g in grads:
            g.mul_(torch.clamp(0.1 / (norm + 1e-6), max=1.0))
        optimizer.step()
    assert norms[1] > 5 * norms[0] > 0.5  # both far above the clipping threshold
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # the gradient Adam saw never exceeds the maximum (up to the float32 rounding of re-computing its norm)
    assert all(n <= 0.1 * (1 + 1e-6) for n in seen)
    assert seen == pytest.approx([0.1 * n / (n + 1e-6) for n in norms], rel=1e-5)
    logged = scalars(tmp_path / "tensorboard", "metrics/grad_norm")  # the norm before clipping
    assert [logged[1], logged[2]] == pytest.approx(norms, rel=1e-5)


def test_multistep_learning_rate_at_each_update(tmp_path):
    """milestones [3, 5], gamma 0.5: updates 0-2 use 1, updates 3-4 use 0.5, updates 5-6 use 0.25."""
    trainer = toy_trainer(tmp_path, ToySource(), steps=7, lr=1.0, milestones=(3, 5), gamma=0.5, log_every=1,
                          checkpoint_every=100)
    used = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    trainer.fit()
    assert used == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    logged = scalars(tmp_path / "tensorboard", "lr")  # step s logs the rate of update s - 1
    assert [logged[s] for s in range(1, 8)] == used


def test_multistep_learning_rate_continues_across_a_resume(tmp_path):
    """milestones [2, 5], checkpoint at 4: the resumed run uses 0.5 for update 4 and 0.25 from
    update 5 on, as the uninterrupted run (a scheduler restarted at the checkpoint would count
    its milestones from there)."""
    common = dict(lr=1.0, milestones=(2, 5), gamma=0.5, log_every=1, checkpoint_every=4)
    toy_trainer(tmp_path, ToySource(), steps=4, **common).fit()
    resumed = toy_trainer(tmp_path, ToySource(), steps=8, **common)
    resumed.resume(tmp_path / "checkpoints" / "last.pt")
    used = []
    resumed.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    resumed.fit()
    assert used == [0.5, 0.25, 0.25, 0.25]


def test_plateau_halves_after_exactly_patience_bad_validations():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = PlateauSchedule(opt, plateau=PlateauConfig(patience=3, factor=0.5, threshold=0.0))
    lrs = []
    for loss in [5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.5, 3.0, 3.0, 4.0]:
        plateau.after_validation(loss)
        lrs.append(opt.param_groups[0]["lr"])
    # best 5, 4 (better), then three without improvement: halved at the third, not the second or fourth;
    # 3.0 improves (counter reset), 3.5, 3.0 (equal: no improvement), 3.0: the third -> halved again
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert plateau.state_dict() == {"best": 3.0, "bad_validations": 1, "reductions": 2}


def test_plateau_improvement_threshold_is_relative_to_the_magnitude():
    """Gaussian NLLs are often negative: -999.95 after -1000 is worse, not an improvement
    (torch's ReduceLROnPlateau 'rel' mode would count it as one)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = PlateauSchedule(opt, plateau=PlateauConfig(patience=1, factor=0.5, threshold=1e-4))
    plateau.after_validation(-1000.0)
    plateau.after_validation(-999.95)
    assert opt.param_groups[0]["lr"] == 0.5
    plateau.after_validation(-1000.05)  # better by 5e-5 relative: below the 1e-4 threshold, no improvement
    assert opt.param_groups[0]["lr"] == 0.25 and plateau.best == -1000.0
    plateau.after_validation(-1000.2)  # better by 2e-4 relative
    assert opt.param_groups[0]["lr"] == 0.25 and plateau.best == -1000.2
    plateau.after_validation(float("nan"))  # never an improvement
    assert opt.param_groups[0]["lr"] == 0.125 and plateau.best == -1000.2


def test_plateau_never_goes_below_min_lr():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = PlateauSchedule(opt, plateau=PlateauConfig(patience=1, factor=0.5, threshold=0.0, min_lr=0.3))
    lrs = []
    for loss in [1.0, 2.0, 2.0, 2.0]:
        plateau.after_validation(loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.3, 0.3]  # 0.25 and 0.15 are below min_lr 0.3
    assert plateau.reductions == 3


def test_plateau_state_round_trip_continues_the_count():
    """A resumed plateau scheduler two bad validations into its patience of 3 halves the LR at
    the next bad one, as the uninterrupted one does."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    first = PlateauSchedule(opt, plateau=PlateauConfig(patience=3, factor=0.5, threshold=0.0))
    for loss in [3.0, 4.0, 4.0]:
        first.after_validation(loss)
    assert first.state_dict() == {"best": 3.0, "bad_validations": 2, "reductions": 0}
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = PlateauSchedule(opt2, plateau=PlateauConfig(patience=3, factor=0.5, threshold=0.0))
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == first.state_dict()
    resumed.after_validation(3.5)
    assert opt2.param_groups[0]["lr"] == 0.5 and resumed.state_dict() == {"best": 3.0, "bad_validations": 0, "reductions": 1}


def test_grad_clip_0_applies_the_raw_gradients(tmp_path):
    """grad_clip=0 disables clipping: the parameters equal plain Adam's on unclipped gradients
    (gradients of norm > 1, so any clipping would change them)."""
    torch.manual_seed(0)
    model = ToyRegression()
    reference = copy.deepcopy(model)
    trainer = toy_trainer(tmp_path, ToySource(scales={1: 10.0, 2: 10.0}), model=model, steps=2, grad_clip=0.0,
                          milestones=(), checkpoint_every=100, log_every=1)
    trainer.fit()
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.05, betas=(0.9, 0.999))
    source, norms = ToySource(scales={1: 10.0, 2: 10.0}), []
    for step in range(2):
        optimizer.zero_grad()
        reference(source.next_batch(), trainer.step_context(step)).loss.backward()
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))))
        optimizer.step()
    assert min(norms) > 1.0
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    logged = scalars(tmp_path / "tensorboard", "metrics/grad_norm")
    assert [logged[1], logged[2]] == pytest.approx(norms, rel=1e-5)


class StepLoss(nn.Module):
    """Loss = the index of the update (0, 1, 2, ...): a logged window mean is known exactly."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, batch, ctx):
        return ModelOutput(loss=self.w.sum() * 0 + float(ctx.step), terms={}, metrics={})


def test_logged_loss_is_the_mean_over_its_window(tmp_path):
    """log_every=5 over 12 updates: step 5 logs mean(0..4) = 2, step 10 mean(5..9) = 7, and the
    last, short window (updates 10, 11) 10.5: divided by its own length, not log_every."""
    toy_trainer(tmp_path, ToySource(), model=StepLoss(), steps=12, log_every=5, checkpoint_every=100, milestones=()).fit()
    assert scalars(tmp_path / "tensorboard", "loss") == {5: 2.0, 10: 7.0, 12: 10.5}


def test_a_resumed_run_keeps_the_events_logged_up_to_its_checkpoint(tmp_path):
    """Killed asking for batch 5 (steps 1-4 logged, checkpoint at 3) and resumed from step 3:
    the events of steps 1-3 stay, the killed attempt's step 4 is replaced, and every step is
    logged once with the uninterrupted run's value."""
    common = dict(steps=6, log_every=1, checkpoint_every=3, milestones=())
    toy_trainer(tmp_path / "straight", ToySource(), **common).fit()
    with pytest.raises(KeyboardInterrupt):
        toy_trainer(tmp_path / "split", ToySource(stop_at=5), **common).fit()
    resumed = toy_trainer(tmp_path / "split", ToySource(), **common)
    resumed.resume(tmp_path / "split" / "checkpoints" / "last.pt")
    assert resumed.step == 3
    resumed.fit()
    straight = scalars(tmp_path / "straight" / "tensorboard", "loss")
    assert sorted(straight) == [1, 2, 3, 4, 5, 6]
    assert scalars(tmp_path / "split" / "tensorboard", "loss") == straight


def test_a_checkpoint_of_another_world_size_reseeds_with_seed_plus_step(tmp_path):
    """Per-process RNG states of 2 processes cannot be given to 1: the streams are re-seeded
    with seed + step (not seed: the resumed run would replay the first steps' random draws)."""
    toy_trainer(tmp_path / "a", ToySource(), steps=4, checkpoint_every=4).fit()
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    state["world_size"], state["processes"] = 2, state["processes"] * 2
    trainer = Trainer(ToyRegression(), ToySource(), toy_config(steps=8), tmp_path / "b", seed=5)
    trainer.restore(state, tmp_path / "a" / "checkpoints" / "last.pt")
    assert trainer.step == 4
    got = torch.rand(3)
    assert torch.equal(got, torch.rand(3, generator=torch.Generator().manual_seed(5 + 4)))
    assert np.random.random() == np.random.RandomState(9).random_sample()


class NonFiniteGradient(nn.Module):
    """A finite loss (0) whose gradient is NaN: d|w|^0.5/dw at w = 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, batch, ctx):
        return ModelOutput(loss=self.w.abs().sqrt().sum(), terms={"root": self.w.abs().sqrt().sum()}, metrics={})


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_non_finite_gradient_stops_before_the_update(tmp_path, grad_clip):
    model = NonFiniteGradient()
    trainer = toy_trainer(tmp_path, ToySource(), model=model, grad_clip=grad_clip)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm at step 0 \(gradient norm=nan\); loss terms: root=0"):
        trainer.fit()
    assert trainer.step == 0 and torch.equal(model.w.detach(), torch.zeros(1))  # Adam never saw the NaN


def test_plateau_resets_its_count_on_improvement_and_stops_at_min_lr():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = PlateauSchedule(opt, plateau=PlateauConfig(patience=2, factor=0.5, threshold=0.0, min_lr=0.3))
    for loss in [5.0, 6.0, 4.0, 6.0]:  # the improvement to 4 resets the count: 1, 0, 1 bad validations
        plateau.after_validation(loss)
    assert opt.param_groups[0]["lr"] == 1.0 and plateau.bad_validations == 1
    lrs = []
    for _ in range(5):
        plateau.after_validation(7.0)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.5, 0.5, 0.3, 0.3, 0.3]  # 1 * 0.5, then 0.25 floored at min_lr = 0.3


def test_schedule_options_are_checked():
    with pytest.raises(ValueError, match="KL warm-up 'linear' needs steps >= 1, got 0"):
        KLWarmup("linear", 0)
    assert KLWarmup("linear", 1)(0) == 0.0 and KLWarmup("linear", 1)(1) == 1.0
    with pytest.raises(ValueError, match="decay must be >= 0 or 'auto', got -0.5"):
        TemperatureSchedule(decay=-0.5)
    assert TemperatureSchedule(decay=0.0)(10**6) == 1.0

# ----- schedules ----------------------------------------------------------------------------
def test_temperature_and_kl_warmup_schedules():
    tau = TemperatureSchedule()
    assert tau(0) == 1.0 and tau(100_000) == pytest.approx(math.exp(-1.0), rel=1e-12)
    assert TemperatureSchedule(init=2.0, decay=1e-3, floor=0.5)(10_000) == 0.5
    auto = TemperatureSchedule(init=2.0, decay="auto", floor=0.1).for_run(1000)
    assert auto.decay == pytest.approx(math.log(20) / 1000, rel=1e-12)
    assert auto(0) == 2.0 and auto(1000) == pytest.approx(0.1, rel=1e-12) and auto(999) > 0.1
    assert auto(500) == pytest.approx(2.0 / math.sqrt(20), rel=1e-12)  # exponential: the geometric mean half-way
    with pytest.raises(ValueError, match="decay=auto anneals from init to floor over the run, so it needs 0 < floor < init"):
        TemperatureSchedule(init=1.0, decay="auto", floor=0.0)
    cos = KLWarmup("cosine", 5000)
    assert cos(0) == 0.0 and cos(2500) == pytest.approx(0.5) and cos(5000) == 1.0 and cos(9000) == 1.0
    assert cos(1000) == pytest.approx(0.5 * (1 - math.cos(math.pi / 5))) and KLWarmup("linear", 5000)(1000) == 0.2
    assert KLWarmup()(0) == 1.0
    with pytest.raises(KeyError, match="unknown KL warm-up schedule 'sigmoid'"):
        KLWarmup("sigmoid")


# ----- the speech batch source --------------------------------------------------------------
def test_speech_segments_are_real_slices_with_their_speakers(feats_dir, caplog):
    with caplog.at_level(logging.WARNING):
        source = SpeechSegmentSource(feats_dir, batch_size=6, seed=3)
    assert "skipping 1 utterance(s) shorter than 34 frames" in caplog.text
    assert source.speakers == ["s0", "s1", "s2"] and "s0_short" not in source.utterances
    mats = dict(kaldiio.load_scp(str(feats_dir / "feats.scp")))
    batch = source.next_batch()
    assert batch["feats"].shape == (6, N_MELS, 34) and batch["feats"].dtype == torch.float32
    assert torch.equal(batch["lengths"], torch.full((6,), 34))
    for seg, spk in zip(batch["feats"], batch["speaker"]):
        hits = [u for u, m in mats.items() if any(np.array_equal(m[s : s + 34].T, seg.numpy()) for s in range(len(m) - 33))]
        assert len(hits) == 1 and hits[0].startswith(source.speakers[spk])


def test_speech_source_state_replays_batches_and_shards_are_disjoint(feats_dir):
    source = SpeechSegmentSource(feats_dir, batch_size=4, seed=1)
    for _ in range(7):  # past the end of a pass (17 utterances)
        source.next_batch()
    state = source.state_dict()
    expected = [source.next_batch() for _ in range(5)]
    other = SpeechSegmentSource(feats_dir, batch_size=4, seed=99)
    other.load_state_dict(state)
    for want in expected:
        got = other.next_batch()
        assert torch.equal(got["feats"], want["feats"]) and torch.equal(got["speaker"], want["speaker"])
    r0 = SpeechSegmentSource(feats_dir, batch_size=4, rank=0, world_size=2)
    r1 = SpeechSegmentSource(feats_dir, batch_size=4, rank=1, world_size=2)
    assert r0.batch_size == 2 and not set(r0.utterances) & set(r1.utterances)
    assert sorted(r0.utterances + r1.utterances) == sorted(SpeechSegmentSource(feats_dir).utterances)
    assert r0.speakers == r1.speakers  # ids from the whole utt2spk, not the shard


def test_speech_source_errors(tmp_path, feats_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SpeechSegmentSource(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "feats.scp").write_text("")
    with pytest.raises(SpeechDataError, match="empty"):
        SpeechSegmentSource(empty)
    short = write_feats(tmp_path / "short", {"a_1": 10, "a_2": 33})
    with pytest.raises(SpeechDataError, match="no utterance .* has the 34 frames"):
        SpeechSegmentSource(short)
    with pytest.raises(SpeechDataError, match=r"n_mels=40"):
        SpeechSegmentSource(feats_dir, n_mels=40)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        SpeechSegmentSource(feats_dir, batch_size=5, world_size=2)
    nospk = write_feats(tmp_path / "nospk", {"b_1": 50})
    (nospk / "utt2spk").unlink()
    with pytest.raises(FileNotFoundError, match="no utt2spk"):
        SpeechSegmentSource(nospk)


# ----- config errors --------------------------------------------------------------------------
def test_config_errors_are_clear(tmp_path, feats_dir, capsys):
    with pytest.raises(ConfigError, match="unknown quantizer 'nope'; choose one of: .*sq_gauss1"):
        compose_config(["quantizer=nope"])
    with pytest.raises(ConfigError, match="data.feats_dir .*e.g. data.feats_dir=feats/train"):
        build_run(compose_config(["experiment=mini"]))
    with pytest.raises(ConfigError, match="feature directory .*missing_corpus does not exist"):
        build_run(tiny_cfg(tmp_path / "missing_corpus", tmp_path / "exp"))
    with pytest.raises(ConfigError, match="even number"):
        build_run(tiny_cfg(feats_dir, tmp_path / "exp", "data.segment_frames=31"))
    with pytest.raises(ConfigError, match="context frame"):
        build_run(tiny_cfg(feats_dir, tmp_path / "exp", "data.context_frames=2"))
    with pytest.raises(ConfigError, match="^training.amp: expected one of 'none', 'bf16', 'fp16', got 'fp8'$"):
        build_run(tiny_cfg(feats_dir, tmp_path / "exp", "training.amp=fp8"))
    with pytest.raises(ConfigError, match="unknown model.likelihood.name 'laplace'"):
        build_run(tiny_cfg(feats_dir, tmp_path / "exp", "quantizer.likelihood.name=laplace"))
    with pytest.raises(ResumeError, match="resume=.*none.pt: no such checkpoint"):
        build_run(tiny_cfg(feats_dir, tmp_path / "exp", f"resume={tmp_path}/none.pt"))
    assert not (tmp_path / "exp" / "config.yaml").exists()  # nothing written by a run that could not start
    assert cli.main(["train", "quantizer=nope"]) == 2
    assert "speechsq train: error: unknown quantizer 'nope'" in capsys.readouterr().err


def test_help_lists_groups_and_options(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    out = capsys.readouterr().out
    assert "quantizer" in out and "sq_gauss1" in out and "experiment=mini" in out


# ----- end to end through the CLI, and load_model ----------------------------------------------
def test_cli_trains_and_load_model_rebuilds_the_model(feats_dir, tmp_path):
    exp = tmp_path / "exp"
    args = ["experiment=mini", "quantizer=vq_ema", f"data.feats_dir={feats_dir}", f"exp_dir={exp}", *TINY,
            "training.steps=6", "training.checkpoint_every=3", "training.log_every=3"]
    assert train_main(args) == 0
    assert sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["last.pt", "step_3.pt", "step_6.pt"]
    assert (exp / "speakers.txt").read_text().splitlines() == ["s0 0", "s1 1", "s2 2"]
    model, cfg = load_model(exp / "checkpoints" / "last.pt")
    assert not model.training and cfg.model.speakers == ["s0", "s1", "s2"] and cfg.quantizer.name == "vq_ema"
    ckpt = load_checkpoint(exp / "checkpoints" / "last.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key])
    feats = torch.rand(2, N_MELS, 25)
    recon = model.reconstruct(feats, torch.tensor([25, 12]), model.speaker_ids(["s2", "s0"]))
    assert recon.shape == feats.shape and torch.isfinite(recon).all()
    assert not recon[1, :, 12:].any()  # exactly zero beyond each length


@pytest.mark.slow
def test_mini_configuration_learns(feats_dir, tmp_path):
    """experiment=mini as shipped: reconstruction well below the mean-spectrum baseline, perplexity >> 1."""
    trainer = build_run(compose_config(["experiment=mini", "quantizer=vq_ema", f"data.feats_dir={feats_dir}",
                                        f"exp_dir={tmp_path}", "training.progress=false"]))
    result = trainer.fit()
    mats = [m for _, m in kaldiio.load_scp(str(feats_dir / "feats.scp")).items()]
    allf = np.concatenate(mats)
    baseline = float(((allf - allf.mean(0)) ** 2).mean())
    assert result.metrics["metrics/mse"] < 0.3 * baseline
    assert result.metrics["metrics/quantizer/perplexity"] > 4
