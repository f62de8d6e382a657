"""Figures a reader understands: MSE in dB² as the table, codebook-size lines, annealing
parameters per model, colourbars and labels, and `speechsq plots` errors."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from speechsq import cli
from speechsq.eval import plots
from speechsq.eval.codebook import code_usage_figure, plot_code_usage
from speechsq.features import Cmvn


def write_run(root, quantizer, seed, scalars, overrides=()):
    from torch.utils.tensorboard import SummaryWriter

    from speechsq.training import compose_config

    run = root / quantizer / f"seed{seed}"
    run.mkdir(parents=True)
    cfg = compose_config(["experiment=mini", f"quantizer={quantizer}", f"data.feats_dir={root / 'feats'}", *overrides])
    OmegaConf.save(cfg, run / "config.yaml")
    writer = SummaryWriter(str(run / "tensorboard"))
    for tag, values in scalars.items():
        for step, value in zip((50, 100), values):
            writer.add_scalar(tag, value, step)
    writer.close()
    return run


def panel(panels, title_part):
    return next(p for p in panels if title_part in p.title)


def test_training_curve_panels(tmp_path):
    common = {"loss": [3.0, 2.0], "metrics/mse": [0.02, 0.01], "metrics/quantizer/perplexity": [10.0, 20.0]}
    runs = {
        "vq_ema/seed1": write_run(tmp_path, "vq_ema", 1, common),
        "vq_ema/seed2": write_run(tmp_path, "vq_ema", 2, common),
        "sq_gauss1/seed1": write_run(tmp_path, "sq_gauss1", 1, {**common, "metrics/quantizer/sigma2_phi": [1.0, 0.01]},
                                     ["quantizer.num_codes=32"]),
    }
    scalars = {label: plots.read_scalars(run) for label, run in runs.items()}
    infos = {label: plots.run_info(label, run) for label, run in runs.items()}
    panels = plots.curve_panels(scalars, infos)
    titles = [p.title for p in panels]
    assert titles == ["VQ-VAE w/ EMA: training loss (NLL + latent term)", "Gaussian SQ-VAE (I): training loss (NLL + latent term)",
                      "reconstruction MSE on training segments", "codebook perplexity (training batches)",
                      "SQ-VAE posterior variance σ²_φ (self-annealing)"]
    assert [s.label for s in panels[0].series] == ["seed 1", "seed 2"]  # one loss axis per objective
    mse = panel(panels, "MSE")
    assert mse.ylabel == "MSE (dB²)"
    np.testing.assert_allclose(mse.series[0].y, [0.02 * 80**2, 0.01 * 80**2], rtol=1e-6)  # top_db² exactly
    perplexity = panel(panels, "perplexity")
    assert perplexity.hlines == [(32.0, "codebook size K = 32"), (64.0, "codebook size K = 64")]
    sigma = panel(panels, "σ²_φ")
    assert [s.label for s in sigma.series] == ["sq_gauss1/seed1"] and sigma.yscale == "log"
    np.testing.assert_allclose(sigma.series[0].y, [1.0, 0.01], rtol=1e-6)
    assert all(p.xlabel == "training step" and p.ylabel for p in panels)
    path = plots.training_curves(runs, tmp_path / "curves.png", title="mini")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_standardised_mse_is_converted_with_the_cmvn_variance(tmp_path):
    (tmp_path / "feats").mkdir()
    Cmvn(np.zeros(80, np.float32), np.full(80, 3.0, np.float32), 1).save(tmp_path / "feats" / "cmvn.npz")
    run = write_run(tmp_path, "vq_ema", 1, {"metrics/mse": [0.5, 0.25]}, ["preprocessing=vctk"])
    label = "vq_ema/seed1"
    panels = plots.curve_panels({label: plots.read_scalars(run)}, {label: plots.run_info(label, run)})
    mse = panel(panels, "MSE")
    np.testing.assert_allclose(mse.series[0].y, [4.5, 2.25], rtol=1e-6)
    assert mse.ylabel == "MSE (dB²)"  # equal std in every band: exact
    Cmvn(np.zeros(80, np.float32), np.linspace(1, 2, 80).astype(np.float32), 1).save(tmp_path / "feats" / "cmvn.npz")
    panels = plots.curve_panels({label: plots.read_scalars(run)}, {label: plots.run_info(label, run)})
    assert panel(panels, "MSE").ylabel.startswith("MSE (dB², ≈")
    (tmp_path / "feats" / "cmvn.npz").unlink()
    panels = plots.curve_panels({label: plots.read_scalars(run)}, {label: plots.run_info(label, run)})
    assert panel(panels, "MSE").series[0].label == "vq_ema/seed1 (feature units²)"


def test_feature_db_conversions():
    zs = plots.feature_db({"n_mels": 2, "top_db": 80, "add_one": True})
    # the ZeroSpeech pipeline adds one unless told otherwise: 1 is 0 dB, 0 is -top_db
    np.testing.assert_array_equal(plots.feature_db({"n_mels": 1, "top_db": 80}).to_db(np.array([[1.0, 0.0]])), [[0.0, -80.0]])
    np.testing.assert_array_equal(plots.feature_db({"n_mels": 1, "top_db": 80, "add_one": False}).to_db(np.array([[0.0]])), [[0.0]])
    np.testing.assert_allclose(zs.to_db(np.array([[1.0, 0.5], [0.0, 0.25]])), [[0.0, -40.0], [-80.0, -60.0]])
    assert zs.mse_db2(np.array([[1.0, 0.5]]).repeat(2, 0), np.array([[0.5, 0.5]]).repeat(2, 0)) == pytest.approx(800.0)
    cmvn = Cmvn(np.array([-50.0, -40.0], np.float32), np.array([2.0, 4.0], np.float32), 1)
    vctk = plots.feature_db({"n_mels": 2, "standardize": True}, cmvn)
    np.testing.assert_allclose(vctk.to_db(np.array([[1.0], [1.0]])), [[-48.0], [-36.0]])
    assert vctk.scalar_factor == 10.0 and not vctk.scalar_exact
    assert plots.feature_db({"n_mels": 2, "standardize": True}) is None  # no statistics: no dB


def test_reconstruction_panels_in_dB_with_the_table_errors():
    db = plots.feature_db({"n_mels": 3, "top_db": 80, "add_one": True})
    x = {"u1": np.array([[1.0, 0.5], [0.75, 0.25], [0.5, 0.0]])}
    recon = {"vq_ema": {"u1": x["u1"] + 0.125}}
    rows = plots.reconstruction_panels(x, recon, db, 0.01, speakers={"u1": "V001"}, errors={"vq_ema": {"u1": 12.3456}})
    first, second = rows[0]
    assert first.title == "input u1 (V001)" and (first.vmin, first.vmax) == (-80.0, 0.0)
    np.testing.assert_allclose(second.image, db.to_db(x["u1"] + 0.125))
    assert second.title == "VQ-VAE w/ EMA\nMSE 12.35 dB² (as in the table)"
    assert first.colour_label == "log-Mel magnitude (dB, peak-normalised signal)"
    rows = plots.reconstruction_panels(x, recon, db)
    assert rows[0][1].title.endswith(f"MSE {0.125**2 * 6400:.2f} dB² (all frames)")
    fig = plots.draw_images(rows, "test")
    assert len(fig.axes) == 3  # two spectrograms and the row's colourbar
    assert fig.axes[2].get_ylabel() == "log-Mel magnitude (dB, peak-normalised signal)"
    assert fig.axes[0].get_xlabel() == "time (s)"
    image = plots.figure_to_array(fig)
    assert image.dtype == np.uint8 and image.shape[2] == 3


def test_code_usage_figure_marks_active_codes_perplexity_and_codebook_size(tmp_path):
    fig = code_usage_figure(np.array([2, 0, 1, 1]), "VQ-VAE", "test set, seed 1")
    left, right = fig.axes
    assert left.get_ylabel() == "share of frames (%)" and left.get_xlabel() == "code index (codebook size K = 4)"
    assert [p.get_height() for p in left.patches] == [50.0, 0.0, 25.0, 25.0]
    labels = right.get_legend_handles_labels()[1]
    assert labels[:3] == ["active codes = 3", "perplexity = 2.8", "codebook size K = 4"]
    assert "test set, seed 1" in fig._suptitle.get_text()
    path = plot_code_usage(np.array([5, 0, 3, 1]), tmp_path / "usage.png", covers="x")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_command_errors(tmp_path, capsys):
    assert cli.main(["plots", "--exp-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"speechsq plots: error: experiment directory {tmp_path / 'missing'} does not exist (run the recipe's training stage first)"
    assert cli.main(["plots", "--exp-dir", str(tmp_path)]) == 2
    assert "no runs (<quantizer>/seed<N>/ with tensorboard/ or train.log)" in capsys.readouterr().err
