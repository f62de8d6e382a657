"""Bad configuration gets one clear line (exit 2, before anything is read or written); every
shipped configuration passes the schema; per-quantizer temperature schedules and image
learning rates resolve as their papers say."""

import logging
import math
import typing

import pytest
import torch
from omegaconf import OmegaConf

from speechsq import cli
from speechsq.training import build_run, compose_config, validate_config
from speechsq.training.config import group_options
from speechsq.training.schema import SpeechDataSchema, describe, validate_tree
from speechsq.training.trainer import TrainerConfig
from test_trainer import feats_dir, tiny_cfg  # noqa: F401 - feats_dir is a fixture

SPEECH = ["experiment=mini"]
IMAGES = ["experiment=images_digits"]

CASES = [
    (SPEECH, "training.steps=abc", "training.steps: expected an integer, got 'abc'"),
    (SPEECH, "training.steps=5.5", "training.steps: expected an integer, got 5.5"),
    (SPEECH, "training.steps=0", "training.steps must be >= 1, got 0"),
    (SPEECH, "+quantizer.num_code=8", "unknown key quantizer.num_code; did you mean quantizer.num_codes?"),
    (SPEECH, "quantizer.num_code=8", "unknown key quantizer.num_code; did you mean quantizer.num_codes?"),
    (SPEECH, "quantizer.num_codes=many", "quantizer.num_codes: expected an integer, got 'many'"),
    (SPEECH, "+quantizer.temperature.flor=0.1", "unknown key quantizer.temperature.flor; did you mean quantizer.temperature.floor?"),
    (SPEECH, "data.batchsize=4", "unknown key data.batchsize; did you mean data.batch_size?"),
    (SPEECH, "data.preload=maybe", "data.preload: expected true or false, got 'maybe'"),
    (SPEECH, "model.encoder_chanels=16", "unknown key model.encoder_chanels; did you mean model.encoder_channels?"),
    (SPEECH, "model.jitter=lots", "model.jitter: expected a number, got 'lots'"),
    (SPEECH, "training.lr=fast", "training.lr: expected a number, got 'fast'"),
    (SPEECH, "training.milestones=[1000,1.5]", "training.milestones: expected a list of integers, got [1000, 1.5]"),
    (SPEECH, "training.amp=fp8", "training.amp: expected one of 'none', 'bf16', 'fp16', got 'fp8'"),
    (SPEECH, "training.sheduler=plateau", "unknown key training.sheduler; did you mean training.scheduler?"),
    (SPEECH, "training.scheduler=cosine", "training.scheduler: unknown 'cosine'; choose one of multistep, plateau"),
    (SPEECH, "training.validation.every=sometimes", "training.validation.every: expected an integer or 'epoch', got 'sometimes'"),
    (SPEECH, "training.num_threads=many", "training.num_threads: expected an integer or 'auto', got 'many'"),
    (SPEECH, "+training.plateau.patiense=2", "unknown key training.plateau.patiense; did you mean training.plateau.patience?"),
    (SPEECH, "training.kl_warmup.schedule=sigmoid", "training.kl_warmup: unknown KL warm-up schedule 'sigmoid'; known: cosine, linear, none"),
    (SPEECH, "seed=one", "seed: expected an integer, got 'one'"),
    (SPEECH, "+sed=3", "unknown key sed; did you mean seed?"),
    (SPEECH, "resume=never", "resume: expected 'auto' (continue, the default), 'restart' (start over; the old run is moved "
                             "aside) or a checkpoint path ending in .pt, got 'never'"),
    (SPEECH, "quantizer.options.betta=0.3", "quantizer 'sq_gauss1' does not take option(s) ['betta']; it accepts: "
                                             "log_sigma2_init, init, variance_form"),
    (SPEECH, "quantizer.num_codes=1", "quantizer: num_codes must be >= 2 (a codebook of one code carries no information), got 1"),
    (IMAGES, "data.pixel=categorical", "unknown key data.pixel; did you mean data.pixels?"),
    (IMAGES, "data.split=dev", "data.split: expected one of 'train', 'valid', 'test', got 'dev'"),
    (IMAGES, "+data.valid_splt=test", "unknown key data.valid_splt; did you mean data.valid_split?"),
    (IMAGES, "model.widht=16", "unknown key model.widht; did you mean model.width?"),
    (IMAGES, "model.normalize_latent=1", "model.normalize_latent: expected true or false, got 1"),
]


@pytest.mark.parametrize("base,override,message", CASES, ids=[c[1] for c in CASES])
def test_bad_configuration_is_one_line_and_exit_2(tmp_path, capsys, base, override, message):
    exp = tmp_path / "exp"
    extra = ["data.feats_dir=feats/train"] if base is SPEECH else []
    assert cli.main(["train", *base, *extra, f"exp_dir={exp}", override]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"speechsq train: error: {message}\n"
    assert not exp.exists()  # failed before touching anything


def test_the_schema_describes_types_and_fills_optional_keys():
    hints = typing.get_type_hints(TrainerConfig)
    assert describe(hints["betas"]) == "a list of 2 values (a number, a number)"
    assert describe(hints["milestones"]) == "a list of integers"
    tree = {"name": "speech_segments", "feats_dir": "f", "n_mels": 80, "batch_size": 4, "segment_frames": 32,
            "context_frames": 1}
    assert validate_tree(tree, SpeechDataSchema, "data") == [
        ("data.data_dir", None), ("data.preload", False), ("data.valid_feats_dir", None), ("data.valid_data_dir", None),
    ]
    del tree["n_mels"]
    with pytest.raises(ValueError, match=r"^data.n_mels: missing \(a required key; set it in the config files or as "
                                         r"data.n_mels=...\)$"):
        validate_tree(tree, SpeechDataSchema, "data")


@pytest.mark.parametrize("quantizer", group_options("quantizer"))
def test_every_quantizer_config_passes_the_schema(quantizer):
    cfg = compose_config([f"quantizer={quantizer}", "data.feats_dir=feats/train"])
    validate_config(cfg)
    assert set(cfg.quantizer.temperature) == {"init", "decay", "floor"}  # every quantizer carries its schedule


def _data(experiment: str) -> str:
    if experiment in ("mini", "paper"):
        return "data.feats_dir=feats/train"
    return "data.codes_dir=codes/train" if experiment.startswith("prior") else "data.root=/data"


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_passes_the_schema(experiment):
    cfg = compose_config([f"experiment={experiment}", _data(experiment)])
    validate_config(cfg)
    training = OmegaConf.to_container(cfg.training, resolve=True)
    if experiment.startswith("images"):  # SQ-VAE App. E.1.2: plateau on the validation loss, once per epoch
        assert (training["scheduler"], training["validation"]["every"], training["plateau"]["patience"]) == ("plateau", "epoch", 3)
        assert training["plateau"]["factor"] == 0.5 and cfg.data.valid_split == "valid"
    else:
        assert training["scheduler"] == "multistep"


def _training(*overrides) -> TrainerConfig:
    cfg = compose_config(list(overrides))
    validate_config(cfg)
    return TrainerConfig.from_mapping(OmegaConf.to_container(cfg.training, resolve=True))


@pytest.mark.parametrize("quantizer", ["gmvq", "gmvq_entropy"])
@pytest.mark.parametrize("experiment,steps", [("paper", 500_000), ("images_cifar10", 125_000)])
def test_gmvq_anneals_the_temperature_from_2_to_0_1_over_the_run(quantizer, experiment, steps):
    cfg = _training(f"experiment={experiment}", f"quantizer={quantizer}", _data(experiment))
    tau = cfg.temperature
    assert cfg.steps == steps and tau(0) == 2.0
    assert tau(steps) == pytest.approx(0.1, rel=1e-12) and tau(steps - 1) > 0.1  # reached at the last step, not before
    assert tau(steps // 2) == pytest.approx(2.0 / math.sqrt(20), rel=1e-9)  # exponential (GM-VQ Sec. 5.1)
    assert tau(10 * steps) == 0.1  # the floor


@pytest.mark.parametrize("quantizer", ["sq_gauss1", "sq_vmf", "edvae", "gumbel_vq"])
def test_the_sq_vae_and_edvae_temperature_is_exp_minus_1e5_t(quantizer):
    tau = _training(f"quantizer={quantizer}", "data.feats_dir=f").temperature
    assert tau(0) == 1.0 and tau(100_000) == pytest.approx(math.exp(-1.0), rel=1e-12)


def test_a_temperature_override_follows_the_interpolation(caplog):
    with caplog.at_level(logging.INFO, logger="speechsq"):
        cfg = compose_config(["quantizer=gmvq", "data.feats_dir=f", "training.temperature.decay=0.001"])
    assert "override training.temperature.decay: training.temperature follows quantizer.temperature" in caplog.text
    assert cfg.quantizer.temperature.decay == 0.001
    assert OmegaConf.to_container(cfg.training, resolve=True)["temperature"] == {"init": 2.0, "decay": 0.001, "floor": 0.1}


@pytest.mark.parametrize("quantizer,lr", [("vq", 3e-4), ("vq_ema", 3e-4), ("vq_ema_reset", 3e-4), ("sq_gauss1", 1e-3),
                                          ("sq_vmf", 1e-3), ("gmvq", 1e-3)])
def test_image_learning_rate_per_quantizer_family(quantizer, lr):
    """SQ-VAE App. E.1.2: Adam 3e-4 for VQ-VAE, 1e-3 for the other models; speech keeps its own."""
    assert _training("experiment=images_digits", f"quantizer={quantizer}").lr == lr
    assert _training("experiment=paper", f"quantizer={quantizer}", "data.feats_dir=f").lr == 4e-4


def test_num_threads_is_chosen_once_at_start_and_logged(feats_dir, tmp_path, caplog, monkeypatch):
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="speechsq"):
            build_run(tiny_cfg(feats_dir, tmp_path / "a", "training.num_threads=2"))
        assert torch.get_num_threads() == 2 and "intra-op threads: 2 (training.num_threads=2)" in caplog.text
        monkeypatch.setenv("SPEECHSQ_THREADS", "3")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="speechsq"):
            build_run(tiny_cfg(feats_dir, tmp_path / "b"))
        assert torch.get_num_threads() == 3 and "intra-op threads: 3 (training.num_threads=auto)" in caplog.text
    finally:
        torch.set_num_threads(before)
