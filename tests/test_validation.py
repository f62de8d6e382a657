"""The validation pass (held-out loss for speech and images), the plateau scheduler driven by
it, the model's media hook at checkpoints, and TensorBoard hparams at the end."""

import logging

import kaldiio
import numpy as np
import pytest
import torch
from torch import nn

from speechsq.data.validation import SpeechValidationSegments
from speechsq.models.base import ModelOutput
from speechsq.quantizers import StepContext
from speechsq.training import ConfigError, Trainer, build_run, compose_config, load_checkpoint, load_model
from speechsq.training.validation import ValidationConfig, run_validation
from test_trainer import ToyRegression, ToySource, feats_dir, scalars, tiny_cfg, toy_config, write_feats  # noqa: F401


class Batches:
    """A validation source over fixed batches."""

    def __init__(self, batches):
        self._batches = batches
        self.examples = sum(len(next(iter(b.values()))) for b in batches)

    def batches(self):
        return iter(self._batches)


class MeanOfX(nn.Module):
    """loss = mean of x over the batch, metric = max of x; draws a random number (as a stochastic
    quantizer would) that changes no value."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, batch, ctx):
        x = batch["x"]
        return ModelOutput(loss=x.mean() + 0 * self.w, terms={"half": x.mean() / 2},
                           metrics={"max": x.max(), "draw": 0 * torch.rand(())})


def test_validation_means_are_over_examples_and_touch_no_random_stream():
    model = MeanOfX().train()
    source = Batches([{"x": torch.tensor([1.0, 2.0, 3.0])}, {"x": torch.tensor([10.0])}])
    torch.manual_seed(3)
    result = run_validation(model, source.batches(), StepContext(), torch.device("cpu"), step=7)
    after = torch.rand(2)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(2))  # the global stream is where it was
    assert model.training  # back in training mode
    assert (result.step, result.examples) == (7, 4)
    assert result.values == {"loss": 16.0 / 4, "terms/half": 8.0 / 4, "metrics/max": (3.0 * 3 + 10.0) / 4,
                             "metrics/draw": 0.0}
    limited = run_validation(model, source.batches(), StepContext(), torch.device("cpu"), step=7, max_batches=1)
    assert limited.examples == 3 and limited.loss == 2.0
    run_validation(model.eval(), source.batches(), StepContext(), torch.device("cpu"), step=7)
    assert not model.training  # a model in eval mode stays in eval mode


class ScriptedValidation(ToyRegression):
    """Trains as the toy regression; in eval mode returns the next scripted validation loss."""

    def __init__(self, losses):
        super().__init__()
        self.losses = list(losses)

    def forward(self, batch, ctx):
        if self.training:
            return super().forward(batch, ctx)
        return ModelOutput(loss=torch.tensor(self.losses.pop(0)))


def test_plateau_halves_the_lr_after_exactly_three_validations_without_improvement(tmp_path):
    model = ScriptedValidation([5.0, 4.0, 4.0, 4.0, 4.0, 4.5, 4.0, 4.0])
    config = toy_config(steps=8, lr=1.0, scheduler="plateau", validation=ValidationConfig(every=1), log_every=1,
                        checkpoint_every=4)
    trainer = Trainer(model, ToySource(), config, tmp_path, validation_source=Batches([{"x": torch.zeros(2, 3)}]))
    trainer.fit()
    lr = scalars(tmp_path / "tensorboard", "lr")  # the rate each update used
    # validations after updates 1..8: 5 (best), 4 (better), then 4, 4, 4: the third without improvement is after
    # update 5, so update 6 is the first at 0.5; 4.5, 4, 4 after updates 6-8: halved again after update 8
    assert [lr[s] for s in range(1, 9)] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    assert trainer.optimizer.param_groups[0]["lr"] == 0.25
    assert scalars(tmp_path / "tensorboard", "valid/loss") == {s: v for s, v in enumerate(
        [5.0, 4.0, 4.0, 4.0, 4.0, 4.5, 4.0, 4.0], start=1)}
    state = load_checkpoint(tmp_path / "checkpoints" / "step_4.pt")
    assert state["scheduler"] == {"name": "plateau", "state": {"best": 4.0, "bad_validations": 2, "reductions": 0}}
    assert state["metrics"]["valid/loss"] == 4.0


class ValidationLossIsTheStep(ToyRegression):
    def forward(self, batch, ctx):
        if self.training:
            return super().forward(batch, ctx)
        return ModelOutput(loss=torch.tensor(float(ctx.step)), terms={"kl_weight": torch.tensor(ctx.kl_weight)})


def test_validation_after_update_n_uses_the_step_context_of_step_n(tmp_path):
    """The pass after n updates sees step n (its temperature and KL weight: those of the next
    update), and is logged at step n."""
    from speechsq.training.schedules import KLWarmup

    trainer = Trainer(ValidationLossIsTheStep(), ToySource(),
                      toy_config(steps=4, validation=ValidationConfig(every=2), kl_warmup=KLWarmup("linear", 8)),
                      tmp_path, validation_source=Batches([{"x": torch.zeros(2, 3), "y": torch.zeros(2, 1)}]))
    trainer.fit()
    assert scalars(tmp_path / "tensorboard", "valid/loss") == {2: 2.0, 4: 4.0}
    assert scalars(tmp_path / "tensorboard", "valid/terms/kl_weight") == {2: 0.25, 4: 0.5}


def test_a_validation_schedule_needs_a_validation_set_and_epochs(tmp_path, feats_dir):
    with pytest.raises(ConfigError, match="training.scheduler=plateau follows the validation loss, but there is no "
                                          r"validation set \(speech: data.valid_feats_dir; images: data.valid_split\)"):
        Trainer(ToyRegression(), ToySource(), toy_config(scheduler="plateau"), tmp_path)
    with pytest.raises(ConfigError, match="training.validation.every=epoch needs a batch source with a fixed number of "
                                          "batches per epoch"):
        build_run(tiny_cfg(feats_dir, tmp_path / "e", f"data.valid_feats_dir={feats_dir}", "training.validation.every=epoch"))


def test_speech_validation_segments(tmp_path, caplog):
    valid = write_feats(tmp_path / "dev", {"s0_a": 70, "s1_b": 34, "s1_c": 33, "s9_x": 100}, seed=5)
    with caplog.at_level(logging.INFO, logger="speechsq"):
        source = SpeechValidationSegments(valid, speakers=["s0", "s1", "s2"], window=34, batch_size=2)
    assert "1 of 4 held-out utterance(s) left out: their speaker is not a training speaker (e.g. s9_x)" in caplog.text
    mats = dict(kaldiio.load_scp(str(valid / "feats.scp")))
    batches = list(source.batches())
    # s0_a: frames 0-33 and 34-67 (70 frames), s1_b: 0-33, s1_c: too short
    assert source.examples == 3 and [len(b["speaker"]) for b in batches] == [2, 1]
    feats = torch.cat([b["feats"] for b in batches])
    assert torch.equal(feats[0], torch.from_numpy(mats["s0_a"][0:34].T.copy()))
    assert torch.equal(feats[1], torch.from_numpy(mats["s0_a"][34:68].T.copy()))
    assert torch.equal(feats[2], torch.from_numpy(mats["s1_b"][0:34].T.copy()))
    assert torch.cat([b["speaker"] for b in batches]).tolist() == [0, 0, 1]
    assert torch.equal(batches[0]["lengths"], torch.tensor([34, 34]))
    assert list(source.batches())[1]["feats"].shape == (1, 80, 34)  # the same batches every time
    shard = SpeechValidationSegments(valid, speakers=["s0", "s1"], window=34, batch_size=2, rank=1, world_size=2)
    assert shard.examples == 1 and torch.equal(next(shard.batches())["feats"][0], feats[1])


def test_speech_validation_loss_is_logged_and_exact(feats_dir, tmp_path):
    valid = write_feats(tmp_path / "dev", {"s0_v": 80, "s2_v": 50}, seed=9)
    exp = tmp_path / "exp"
    trainer = build_run(tiny_cfg(feats_dir, exp, "quantizer=vq_ema", f"data.valid_feats_dir={valid}", "training.steps=4",
                                 "training.checkpoint_every=2", "training.log_every=2"))
    assert trainer.validate_every == 2 and trainer.validation_source.examples == 3
    trainer.fit()
    logged = scalars(exp / "tensorboard", "valid/loss")
    assert sorted(logged) == [2, 4]
    # recomputed from the step-2 checkpoint: the same number (the validation ran before that checkpoint was written)
    model, _ = load_model(exp / "checkpoints" / "step_2.pt")
    again = run_validation(model, trainer.validation_source.batches(), trainer.step_context(2), torch.device("cpu"), 2)
    assert logged[2] == np.float32(again.loss)
    assert load_checkpoint(exp / "checkpoints" / "step_4.pt")["metrics"]["valid/loss"] == pytest.approx(logged[4], rel=1e-6)


def test_exact_resume_with_validation_and_the_plateau_scheduler(feats_dir, tmp_path):
    valid = write_feats(tmp_path / "dev", {"s0_v": 80, "s1_v": 50}, seed=9)
    common = ["quantizer=sq_gauss1", f"data.valid_feats_dir={valid}", "training.scheduler=plateau",
              "training.validation.every=1", "training.plateau.patience=1", "training.plateau.threshold=0.5",
              "training.checkpoint_every=3",
              "training.log_every=2"]
    build_run(tiny_cfg(feats_dir, tmp_path / "straight", *common, "training.steps=6")).fit()
    build_run(tiny_cfg(feats_dir, tmp_path / "split", *common, "training.steps=3")).fit()
    build_run(tiny_cfg(feats_dir, tmp_path / "split", *common, "training.steps=6")).fit()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["state"]["reductions"] >= 1  # the plateau acted
    assert scalars(tmp_path / "straight" / "tensorboard", "valid/loss") == scalars(tmp_path / "split" / "tensorboard", "valid/loss")


def test_image_validation_runs_once_per_epoch(tmp_path):
    cfg = compose_config(["experiment=images_digits", "quantizer=sq_gauss1", "quantizer.num_codes=8", "quantizer.code_dim=8",
                          "model.width=8", "data.limit=64", "data.batch_size=16", "training.steps=9",
                          "training.checkpoint_every=9", "training.log_every=3", "training.progress=false",
                          f"exp_dir={tmp_path}"])
    trainer = build_run(cfg)
    assert trainer.validate_every == 4 and trainer.validation_source.examples == 64  # 64 held-out images (data.limit)
    trainer.fit()
    assert sorted(scalars(tmp_path / "tensorboard", "valid/loss")) == [4, 8]


# ----- TensorBoard media and hparams ------------------------------------------------------------
class WithSummaries(ToyRegression):
    def __init__(self, fail=False):
        super().__init__()
        self.calls, self.fail = [], fail

    def summaries(self, batch):
        self.calls.append((self.training, torch.is_grad_enabled(), tuple(batch["x"].shape)))
        if self.fail:
            raise RuntimeError("broken hook")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return {
            "images": {"chw": np.zeros((3, 4, 5), dtype=np.float32), "hwc": np.ones((6, 5, 3), dtype=np.uint8) * 255,
                       "gray": torch.rand(6, 7), "said": (np.zeros((4, 5, 3), dtype=np.float32), "HWC")},
            "audio": {"tone": (np.sin(np.linspace(0, 100, 1600)), 16000)},
            "figures": {"curve": fig},
            "scalars": {"extra": 1.5},
            "text": {"note": "MSE 3.0 dB²"},
        }


def _tags(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"images": 0, "audio": 0, "scalars": 0})
    events.Reload()
    return events


def test_the_model_summaries_hook_runs_at_checkpoints_and_lands_in_tensorboard(tmp_path):
    model = WithSummaries()
    trainer = Trainer(model, ToySource(), toy_config(steps=5, checkpoint_every=2), tmp_path,
                      validation_source=Batches([{"x": torch.zeros(4, 3), "y": torch.zeros(4, 1)}]))
    trainer.fit()
    # steps 2, 4 and the last (5); eval mode, no autograd, on the first held-out batch
    assert model.calls == [(False, False, (4, 3))] * 3 and model.training
    events = _tags(tmp_path / "tensorboard")
    tags = events.Tags()
    assert {"images/chw", "images/hwc", "images/gray", "images/said", "figures/curve"} <= set(tags["images"])
    assert tags["audio"] == ["audio/tone"]
    assert [e.step for e in events.Images("images/chw")] == [2, 4, 5]
    sizes = {name: (events.Images(f"images/{name}")[0].height, events.Images(f"images/{name}")[0].width)
             for name in ("chw", "hwc", "gray", "said")}
    assert sizes == {"chw": (4, 5), "hwc": (6, 5), "gray": (6, 7), "said": (4, 5)}
    assert events.Audio("audio/tone")[0].sample_rate == 16000
    assert {e.step: e.value for e in events.Scalars("scalars/extra")} == {2: 1.5, 4: 1.5, 5: 1.5}
    assert "text/note/text_summary" in tags["tensors"]
    note = events.Tensors("text/note/text_summary")[0]
    assert (note.step, note.tensor_proto.string_val[0].decode()) == (2, "MSE 3.0 dB²")


class NoisyWithSummaries(ToyRegression):
    """Training draws noise (as jitter and Gumbel sampling do); the hook draws random numbers too."""

    def __init__(self, hook_draws):
        super().__init__()
        self.hook_draws = hook_draws

    def forward(self, batch, ctx):
        batch = {**batch, "x": batch["x"] + 0.1 * torch.randn_like(batch["x"])}
        return super().forward(batch, ctx)

    def summaries(self, batch):
        torch.rand(self.hook_draws)
        return {"scalars": {"extra": 1.0}}


def test_the_summaries_hook_leaves_the_training_random_stream_alone(tmp_path):
    """Media summaries at checkpoints must not shift the training's noise: a hook that draws
    1000 numbers gives the same parameters as one that draws none."""
    params = []
    for draws in (0, 1000):
        torch.manual_seed(0)
        model = NoisyWithSummaries(draws)
        Trainer(model, ToySource(), toy_config(steps=5, checkpoint_every=2), tmp_path / str(draws)).fit()
        params.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_a_failing_summaries_hook_is_logged_not_fatal(tmp_path, caplog):
    model = WithSummaries(fail=True)
    with caplog.at_level(logging.WARNING, logger="speechsq"):
        result = Trainer(model, ToySource(), toy_config(steps=2, checkpoint_every=2), tmp_path).fit()
    assert result.step == 2 and model.calls == [(False, False, (8, 3))]  # the latest training batch
    assert "step 2: the model's summaries hook failed (RuntimeError: broken hook); nothing logged" in caplog.text


def test_hparams_hold_the_flattened_config_and_the_final_metrics(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_config = {"seed": 3, "name": "toy", "nothing": None, "training": {"lr": 0.05, "milestones": [5], "amp": "none"},
                  "flag": True}
    trainer = Trainer(ToyRegression(), ToySource(), toy_config(steps=4), tmp_path, run_config=run_config)
    result = trainer.fit()
    events = _tags(tmp_path / "tensorboard")
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert hparams == {"seed": 3.0, "name": "toy", "training.lr": 0.05, "training.amp": "none", "flag": True}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/loss", "hparams/terms/mse", "hparams/lr"} <= metric_tags
    assert {e.step: e.value for e in events.Scalars("hparams/loss")} == {4: np.float32(result.metrics["loss"])}
