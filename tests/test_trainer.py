"""The shared trainer: exact resume, non-finite losses, atomic checkpoints, schedules, logs,
config errors, the speech batch source, and load_model."""

import logging
import math
import os
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
from speechsq.training.cli import main as train_main
from speechsq.training.schedules import KLWarmup, TemperatureSchedule

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
    """y = x . w; at ``poison_at`` (a batch number) the inputs are NaN."""

    def __init__(self, poison_at=None):
        self.rng = np.random.default_rng(0)
        self.n = 0
        self.poison_at = poison_at

    def next_batch(self):
        x = self.rng.normal(size=(8, 3)).astype(np.float32)
        y = x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)
        self.n += 1
        if self.n == self.poison_at:
            x[:] = np.nan
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "n": self.n}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.n = state["n"]


def toy_trainer(tmp_path, source, **cfg):
    config = TrainerConfig(**{"steps": 10, "lr": 0.05, "milestones": (5,), "checkpoint_every": 2, "log_every": 2,
                              "device": "cpu", "progress": False, **cfg})
    return Trainer(ToyRegression(), source, config, tmp_path, run_config={"note": "toy"}, seed=0)


def test_generic_model_trains_and_logs(tmp_path):
    trainer = toy_trainer(tmp_path, ToySource(), steps=100, lr=0.1, milestones=(60,), checkpoint_every=50,
                          kl_warmup=KLWarmup("cosine", 20))
    result = trainer.fit()
    assert result.step == 100 and result.metrics["terms/mse"] < 0.01
    assert result.metrics["lr"] == pytest.approx(0.05)  # halved once, at step 60
    assert result.metrics["kl_weight"] == 1.0
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 100 and ckpt["config"] == {"note": "toy"}
    assert {"python", "numpy", "torch"} <= set(ckpt["processes"][0]["rng"])
    assert "train" in (tmp_path / "train.log").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "terms/mse", "terms/reg", "metrics/tau", "lr", "temperature", "kl_weight", "metrics/grad_norm"} <= tags
    temps = [e.value for e in events.Scalars("temperature")]
    assert temps[0] == pytest.approx(math.exp(-1e-5 * 1))


def test_non_finite_loss_stops_with_the_step_and_terms_and_keeps_the_last_checkpoint(tmp_path):
    trainer = toy_trainer(tmp_path, ToySource(poison_at=6))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5 .*mse=nan, reg=.*last good checkpoint: .*step_4\.pt"):
        trainer.fit()
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert "non-finite loss at step 5" in (tmp_path / "train.log").read_text()


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(2)}, "step": 1}, target)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"model": {}, "step": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["step"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
    target.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(target)


# ----- schedules ----------------------------------------------------------------------------
def test_temperature_and_kl_warmup_schedules():
    tau = TemperatureSchedule()
    assert tau(0) == 1.0 and tau(100_000) == pytest.approx(math.exp(-1.0))
    assert TemperatureSchedule(init=2.0, decay=1e-3, floor=0.5)(10_000) == 0.5
    cos = KLWarmup("cosine", 5000)
    assert cos(0) == 0.0 and cos(2500) == pytest.approx(0.5) and cos(5000) == 1.0 and cos(9000) == 1.0
    assert cos(1000) < KLWarmup("linear", 5000)(1000)  # cosine starts slower
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
    with pytest.raises(ConfigError, match="unknown training.amp 'fp8'"):
        build_run(tiny_cfg(feats_dir, tmp_path / "exp", "training.amp=fp8"))
    with pytest.raises(ConfigError, match="unknown model.likelihood.name 'laplace'"):
        build_run(tiny_cfg(feats_dir, tmp_path / "exp", "quantizer.likelihood.name=laplace"))
    with pytest.raises(ConfigError, match="resume=.*no such checkpoint"):
        build_run(tiny_cfg(feats_dir, tmp_path / "exp", f"resume={tmp_path}/none.pt"))
    assert train_main(["quantizer=nope"]) == 2
    assert "unknown quantizer 'nope'" in capsys.readouterr().err


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
