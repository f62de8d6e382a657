"""Bitrate, codebook statistics, spectrogram MSE in dB^2, the report and the pictures."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from speechsq.completion import mark_complete
from speechsq.errors import IncompleteOutputError

from speechsq.eval.bitrate import compute_bitrate, entropy_bits
from speechsq.eval.codebook import codebook_stats, plot_code_usage
from speechsq.eval.mse import db_scale, evaluate_mse, read_eval_list, scored_frames
from speechsq.eval import report as report_mod
from speechsq.eval.plots import read_scalars, reconstruction_figure, training_curves


# --------------------------------------------------------------------------- bitrate


def test_bitrate_equals_hand_computation():
    seqs = {"a": np.array([0, 0, 1, 2]), "b": np.array([2, 2])}
    # pooled counts: 0 -> 2, 1 -> 1, 2 -> 3 over N = 6 symbols
    p = np.array([2, 1, 3]) / 6
    h = -(p * np.log2(p)).sum()
    result = compute_bitrate(seqs, durations={"a": 1.5, "b": 0.5})
    assert result.n_symbols == 6 and result.duration_s == 2.0
    assert result.entropy_bits == pytest.approx(h)
    assert result.bitrate == pytest.approx(6 * h / 2.0)
    # durations from the frame shift: 6 rows * 20 ms
    assert compute_bitrate(seqs, frame_shift=0.02).bitrate == pytest.approx(6 * h / 0.12)


def test_bitrate_of_dense_rows_and_constant_units():
    rows = {"a": np.array([[0.5, 1.0], [0.5, 1.0], [0.0, 1.0]])}
    assert compute_bitrate(rows, frame_shift=0.01).n_distinct == 2
    constant = compute_bitrate({"a": np.zeros(10, int)}, frame_shift=0.01)
    assert constant.bitrate == 0.0 and math.copysign(1.0, constant.entropy_bits) == 1.0  # 0.0, not -0.0, in the JSON
    with pytest.raises(ValueError, match="durations or the frame shift"):
        compute_bitrate({"a": np.zeros(3)})
    with pytest.raises(ValueError, match="no sequences"):
        compute_bitrate({}, frame_shift=0.01)


# --------------------------------------------------------------------------- codebook


def test_codebook_perplexity_and_active_codes():
    stats = codebook_stats([np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3, -1])], num_codes=8)
    assert stats.perplexity == pytest.approx(4.0)  # uniform over 4 codes
    assert stats.active_codes == 4 and stats.n_frames == 8
    one = codebook_stats([np.full(5, 7)], num_codes=8)
    assert one.perplexity == pytest.approx(1.0) and one.active_codes == 1
    assert entropy_bits([1, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_codes"):
        codebook_stats([np.array([9])], num_codes=8)
    with pytest.raises(ValueError, match=r"^code index 8 >= num_codes=8$"):  # the first index past the codebook
        codebook_stats([np.array([0, 8])], num_codes=8)


def test_code_usage_png(tmp_path):
    path = plot_code_usage(np.array([5, 0, 3, 1]), tmp_path / "usage.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- MSE


class ShiftModel:
    """Reconstructs ``x + offset[mel]`` on the valid frames and zeros beyond (as the contract)."""

    n_mels = 4

    def __init__(self, offset):
        self.offset = torch.as_tensor(offset, dtype=torch.float32)
        self.calls = []

    def speaker_ids(self, names):
        return torch.tensor([{"s1": 0, "s2": 1}[n] for n in names])

    def reconstruct(self, feats, lengths, speaker):
        self.calls.append((tuple(feats.shape), lengths.tolist(), speaker.tolist()))
        out = feats + self.offset[None, :, None]
        mask = torch.arange(feats.shape[-1])[None, :] < lengths[:, None]
        return out * mask[:, None, :]


def test_mse_db2_equals_direct_numpy_computation():
    rng = np.random.default_rng(0)
    feats = {"u1": rng.random((7, 4)).astype(np.float32), "u2": rng.random((10, 4)).astype(np.float32)}
    offset = np.array([0.1, -0.2, 0.0, 0.3])
    model = ShiftModel(offset)
    result = evaluate_mse(model, feats, [("u1", "s1"), ("u2", "s2")], db_scale(4, top_db=80.0), batch_size=2, progress=False)
    # reference trimming: 7 -> 6 frames, score 1..4 (4 frames); 10 frames, score 1..8 (8 frames)
    frames = 4 + 8
    expected = (4 * (offset**2).sum() + 8 * (offset**2).sum()) * 80.0**2 / (4 * frames)
    assert result.n_frames == frames
    assert result.mse_db2 == pytest.approx(expected, rel=1e-5)
    # odd lengths are trimmed before the model sees them, and batches are padded
    assert sorted(len_ for call in model.calls for len_ in call[1]) == [6, 10]


def test_mse_of_a_constant_error_is_exactly_top_db_times_error_squared():
    feats = {"u1": np.full((9, 4), 0.5, np.float32), "u2": np.full((6, 4), 0.25, np.float32)}
    result = evaluate_mse(ShiftModel(np.full(4, 0.125)), feats, [("u1", "s1"), ("u2", "s2")], db_scale(4, top_db=80.0),
                          progress=False)
    assert result.mse_db2 == (80.0 * 0.125) ** 2 == 100.0  # every scored frame and mel is off by 0.125 x 80 dB
    assert result.n_frames == (8 - 2) + (6 - 2)
    assert result.per_utterance == {"u1": 100.0, "u2": 100.0}


def test_mse_undoes_standardisation_with_cmvn_std():
    x = {"u": np.zeros((6, 4), np.float32)}
    std = np.array([1.0, 2.0, 3.0, 4.0])
    offset = np.array([1.0, 1.0, 1.0, 1.0])
    result = evaluate_mse(ShiftModel(offset), x, [("u", 0)], db_scale(4, cmvn_std=std), progress=False, trim="none")
    assert result.mse_db2 == pytest.approx(np.mean(std**2))  # (std * 1 dB-unit)^2 averaged over mels
    assert result.n_frames == 6


def test_mse_input_errors():
    with pytest.raises(ValueError, match="exactly one"):
        db_scale(4)
    with pytest.raises(ValueError, match="4 dims"):
        db_scale(3, cmvn_std=np.ones(4))
    with pytest.raises(KeyError, match="no features"):
        evaluate_mse(ShiftModel(np.zeros(4)), {}, [("u", 0)], db_scale(4, top_db=80), progress=False)
    assert scored_frames(7, "reference") == (6, 1, 5)
    assert scored_frames(7, "none") == (7, 0, 7)
    short = evaluate_mse(ShiftModel(np.ones(4)), {"a": np.zeros((2, 4), np.float32), "b": np.zeros((4, 4), np.float32)},
                         [("a", 0), ("b", 0)], db_scale(4, top_db=1.0), progress=False)
    assert short.skipped == ["a"] and short.n_frames == 2
    # without trimming a single frame is still too short for the x2 downsampling: skipped, not fed
    model = ShiftModel(np.ones(4))
    single = evaluate_mse(model, {"a": np.zeros((1, 4), np.float32), "b": np.zeros((3, 4), np.float32)},
                          [("a", 0), ("b", 0)], db_scale(4, top_db=2.0), progress=False, trim="none")
    assert single.skipped == ["a"] and single.n_frames == 3 and single.mse_db2 == 4.0
    assert [call[1] for call in model.calls] == [[3]]


def test_eval_list_from_utt2spk_and_file(tmp_path):
    (tmp_path / "utt2spk").write_text("s2_b s2\ns1_a s1\n")  # read in sorted order
    assert read_eval_list(tmp_path) == [("s1_a", "s1"), ("s2_b", "s2")]
    listing = tmp_path / "list"
    listing.write_text("s1_a s2\n")
    assert read_eval_list(tmp_path, listing) == [("s1_a", "s2")]


# --------------------------------------------------------------------------- report


def _write_metrics(root, quantizer, seed, **values):
    path = root / quantizer / f"seed{seed}" / "eval" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(values))
    mark_complete(path.parent, "eval", ["metrics.json"], producer="test")
    return path


def test_report_means_and_stds_over_seeds(tmp_path, capsys):
    _write_metrics(tmp_path, "vq_ema", 1, mse_db2=30.0, abx_across=20.0, abx_within=10.0, bitrate=400.0, perplexity=100.0, active_codes=300)
    _write_metrics(tmp_path, "vq_ema", 2, mse_db2=32.0, abx_across=22.0, abx_within=12.0, bitrate=420.0, perplexity=110.0, active_codes=310)
    _write_metrics(tmp_path, "sq_gauss1", 1, mse_db2=25.0)
    _write_metrics(tmp_path, "vq_ema", "2_old", mse_db2=99.0)  # a kept-aside copy is no seed directory
    base = tmp_path / "baseline" / "eval" / "metrics.json"
    base.parent.mkdir(parents=True)
    base.write_text(json.dumps({"abx_across": 30.0, "abx_within": 15.0}))
    mark_complete(base.parent, "eval", ["metrics.json"], producer="test")
    assert report_mod.main(["--exp-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quantizers"]["vq_ema"]["seeds"] == [1, 2]
    mse = results["quantizers"]["vq_ema"]["metrics"]["mse_db2"]
    assert mse["mean"] == pytest.approx(31.0) and mse["std"] == pytest.approx(math.sqrt(2.0))
    assert results["quantizers"]["sq_gauss1"]["metrics"]["mse_db2"]["std"] == 0.0
    assert results["baseline"] == {"abx_across": 30.0, "abx_within": 15.0}
    table = (tmp_path / "results.md").read_text()
    assert "VQ-VAE w/ EMA" in table and "31.00 ± 1.41" in table and "Gaussian SQ-VAE (I)" in table
    # two seeds: mean ± sample std (sqrt 2 for 30/32, 10 sqrt 2 for 400/420); one seed: the value alone
    assert "| VQ-VAE w/ EMA | 2 | 31.00 ± 1.41 | 21.00 ± 1.41 | 11.00 ± 1.41 | 410.0 ± 14.1 | 105.0 ± 7.1 | 305 ± 7 |" in table
    assert "| Gaussian SQ-VAE (I) | 1 | 25.00 | – | – | – | – | – |" in table
    assert "log-Mel baseline" in capsys.readouterr().out


def test_report_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        report_mod.collect(tmp_path)


@pytest.mark.parametrize("content,message", [
    ("{not json", r"is not valid JSON \(Expecting property name enclosed in double quotes: line 1 column 2"),
    ("[1, 2]", "holds a JSON list, expected an object of metrics"),
    ('{"mse_db2": "31.0"}', r"mse_db2 is '31.0', expected a number or null"),
    ('{"abx_across": true}', r"abx_across is True, expected a number or null"),
])
def test_report_names_a_malformed_metrics_file(tmp_path, capsys, content, message):
    from speechsq import cli

    _write_metrics(tmp_path, "vq_ema", 1, mse_db2=30.0)
    bad = _write_metrics(tmp_path, "vq_ema", 2)
    bad.write_text(content)
    with pytest.raises(report_mod.ReportInputError, match=rf"^{re.escape(str(bad))}:? {message}"):
        report_mod.collect(tmp_path)
    assert cli.main(["report", "--exp-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"speechsq report: error: {bad}")


def test_report_refuses_an_unfinished_evaluation(tmp_path):
    _write_metrics(tmp_path, "vq_ema", 1, mse_db2=30.0)
    stale = _write_metrics(tmp_path, "vq_ema", 2, mse_db2=99.0)
    (stale.parent / "complete.json").unlink()  # evaluate started again and failed
    with pytest.raises(IncompleteOutputError, match=rf"{stale.parent} is incomplete .*run `speechsq evaluate` again"):
        report_mod.collect(tmp_path)


# --------------------------------------------------------------------------- pictures


def test_training_curves_from_tensorboard_and_text_log(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    tb_run = tmp_path / "vq" / "seed1"
    writer = SummaryWriter(str(tb_run / "tensorboard"))
    for step in (10, 20, 30):
        writer.add_scalar("loss", 1.0 / step, step)
        writer.add_scalar("metrics/mse", 0.5 / step, step)
    writer.close()
    log_run = tmp_path / "sq" / "seed1"
    log_run.mkdir(parents=True)
    (log_run / "train.log").write_text(
        "2024 INFO speechsq.training.trainer: step 50: loss=3.5, mse=0.25, perplexity=40.5, lr=0.001\n"
        "2024 INFO speechsq.training.trainer: step 100: loss=2.5, mse=0.2, perplexity=60, lr=0.001\n"
    )
    tb = read_scalars(tb_run)
    np.testing.assert_array_equal(tb["loss"][0], [10, 20, 30])
    text = read_scalars(log_run)
    np.testing.assert_allclose(text["metrics/quantizer/perplexity"][1], [40.5, 60])
    path = training_curves({"vq": tb_run, "sq": log_run}, tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_reconstruction_figure(tmp_path):
    rng = np.random.default_rng(0)
    x = {"u1": rng.random((8, 20)), "u2": rng.random((8, 15))}
    recon = {"vq_ema": {k: v + 0.1 for k, v in x.items()}, "sq_gauss1": x}
    path = reconstruction_figure(x, recon, tmp_path / "recon.png")
    assert path.stat().st_size > 1000
