"""Paper claims checked from per-seed numbers: exact z values, verdicts, and the report block."""

import json
import math

import pytest
import yaml

from speechsq.completion import mark_complete
from speechsq.eval import report
from speechsq.eval.claims import CLAIM_SETS, check_claims, claims_markdown
from speechsq.errors import SpeechsqError


def _run(exp, row, seed, quantizer, metrics, sigma2=None):
    d = exp / row / f"seed{seed}"
    (d / "eval").mkdir(parents=True)
    likelihood = {"name": "gaussian_fixed", "sigma2": sigma2} if sigma2 is not None else {"name": "gaussian_closed_form"}
    (d / "config.yaml").write_text(yaml.safe_dump({"quantizer": {"name": quantizer, "likelihood": likelihood}, "seed": seed}))
    _metrics(d, metrics)


def _metrics(run_dir, metrics):
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    mark_complete(run_dir / "eval", "eval", ["metrics.json"], producer="test")


@pytest.fixture
def exp(tmp_path):
    # mse per seed: vq sigma2 0.1 -> 50, 52, 54 (mean 52, std 2); sigma2 10 -> 70, 74, 78 (mean 74, std 4)
    # sq_gauss1 -> 53, 55, 57 (mean 55, std 2); abx: vq 0.1 -> 10, 11, 12; vq 10 -> 12, 13, 14; sq -> 9, 10, 11
    for seed, (a, b, c) in enumerate([(50, 70, 53), (52, 74, 55), (54, 78, 57)], 1):
        _run(tmp_path, "vq_ema_sigma2_0.1", seed, "vq_ema", {"mse_db2": a, "abx_across": 9 + seed}, sigma2=0.1)
        _run(tmp_path, "vq_ema_sigma2_10", seed, "vq_ema", {"mse_db2": b, "abx_across": 11 + seed}, sigma2=10.0)
        _run(tmp_path, "sq_gauss1", seed, "sq_gauss1", {"mse_db2": c, "abx_across": 8 + seed})
    return tmp_path


def test_verdicts_and_z_are_exact(exp):
    results = report.collect(exp)
    verdicts = {v.claim: v for v in check_claims("sqvae_zerospeech19", exp, results)}
    texts = [c.text for c in CLAIM_SETS.get("sqvae_zerospeech19")]
    sens_mse, parity_mse, parity_iv, sens_abx, parity_abx = (verdicts[t] for t in texts)
    # 74 - 52 = 22 over sqrt(4^2 + 2^2) = 4.919 -> z = 4.472 > 2
    assert sens_mse.status == "holds" and sens_mse.z == pytest.approx(22 / math.sqrt(20), abs=1e-12)
    assert sens_mse.rows == ["vq_ema_sigma2_10", "vq_ema_sigma2_0.1"]
    # 55 - 52 = 3 over sqrt(2^2 + 2^2) = 2.828 -> z = 1.061 > 1: worse beyond the parity margin
    assert parity_mse.status == "does not hold" and parity_mse.z == pytest.approx(3 / math.sqrt(8), abs=1e-12)
    assert "worse than it by 3.00" in parity_mse.detail
    assert parity_iv.status == "not testable"  # no sq_gauss4 row
    # abx: 13 - 11 = 2 over sqrt(1 + 1) -> z = 1.414 <= 2: the sensitivity does not show
    assert sens_abx.status == "does not hold" and sens_abx.z == pytest.approx(2 / math.sqrt(2), abs=1e-12)
    # sq 10 vs best vq 11: better by 1 -> z = -0.707, holds
    assert parity_abx.status == "holds" and parity_abx.z == pytest.approx(-1 / math.sqrt(2), abs=1e-12)
    assert "better than it by 1.00" in parity_abx.detail


def test_parity_margin_boundary(tmp_path):
    # both rows have std sqrt(2) (values 2 apart), combined std 2: sq exactly 2 worse -> z = 1, holds
    for seed, (v, s) in enumerate([(10.0, 12.0), (12.0, 14.0)], 1):
        _run(tmp_path, "vq_ema", seed, "vq_ema", {"mse_db2": v}, sigma2=0.1)
        _run(tmp_path, "sq_gauss1", seed, "sq_gauss1", {"mse_db2": s})
    results = report.collect(tmp_path)
    parity = check_claims("sqvae_zerospeech19", tmp_path, results)[1]
    assert parity.z == pytest.approx(1.0, abs=1e-9)
    assert parity.status == "holds"
    for seed, value in ((1, 12.01), (2, 14.01)):  # shifted by 0.01: same spread, z = 2.01 / 2
        _metrics(tmp_path / "sq_gauss1" / f"seed{seed}", {"mse_db2": value})
    parity = check_claims("sqvae_zerospeech19", tmp_path, report.collect(tmp_path))[1]
    assert parity.z == pytest.approx(1.005, abs=1e-9) and parity.status == "does not hold"


def test_single_seed_is_never_a_verdict(tmp_path):
    _run(tmp_path, "vq_a", 1, "vq_ema", {"mse_db2": 50}, sigma2=0.1)
    _run(tmp_path, "vq_b", 1, "vq_ema", {"mse_db2": 90}, sigma2=10.0)
    _run(tmp_path, "sq_gauss1", 1, "sq_gauss1", {"mse_db2": 40})
    verdicts = check_claims("sqvae_zerospeech19", tmp_path, report.collect(tmp_path))
    assert [v.status for v in verdicts[:2]] == ["not testable", "not testable"]
    assert "2 or more seeds" in verdicts[0].detail


def test_report_writes_the_claims_block(exp, capsys):
    assert report.main(["--exp-dir", str(exp), "--claims", "sqvae_zerospeech19"]) == 0
    md = (exp / "results.md").read_text()
    assert "### Paper claims, checked on this run (sqvae_zerospeech19)" in md
    assert md.count("**does not hold**") == 2 and md.count("| holds |") == 2 and md.count("not testable") == 1
    stored = json.loads((exp / "results.json").read_text())["claims"]
    assert stored["set"] == "sqvae_zerospeech19" and len(stored["results"]) == 5


def test_unknown_claim_set_is_a_user_error(exp):
    with pytest.raises(SpeechsqError, match="unknown claim set 'nope'"):
        check_claims("nope", exp, report.collect(exp))
    assert "nope" not in claims_markdown("x", [])


@pytest.mark.parametrize("row, shown", [
    ("vq_ema_sigma2_0.1", "VQ-VAE w/ EMA (σ² = 0.1)"),
    ("vq_ema_reset_sigma2_10", "VQ-VAE w/ EMA + code reset (σ² = 10)"),
    ("sq_gauss4", "Gaussian SQ-VAE (IV)"),
    ("my_model", "my_model"),
])
def test_row_display_names(row, shown):
    assert report.display_name(row) == shown


def test_report_adds_the_speech_out_table_from_complete_measures(exp, capsys):
    for seed, (mcd, match) in enumerate([(4.0, 100.0), (5.0, 50.0)], 1):
        folder = exp / "sq_gauss1" / f"seed{seed}" / "synthesis_eval"
        folder.mkdir()
        (folder / "synthesis.json").write_text(json.dumps({"resynthesis_mcd_db": mcd, "resynthesis_lsd_db": 10.0,
                                                           "conversion_speaker_match": match, "conversion_abx_across": None}))
        mark_complete(folder, "synthesis_measures", ["synthesis.json"], producer="test")
    assert report.main(["--exp-dir", str(exp)]) == 0
    results = json.loads((exp / "results.json").read_text())
    spoken = results["quantizers"]["sq_gauss1"]["synthesis"]
    assert spoken["resynthesis_mcd_db"]["mean"] == 4.5 and spoken["conversion_speaker_match"]["mean"] == 75.0
    assert spoken["conversion_abx_across"]["n"] == 0
    assert "synthesis" not in results["quantizers"]["vq_ema_sigma2_0.1"]
    md = (exp / "results.md").read_text()
    assert "| Gaussian SQ-VAE (I) | 2 | 4.50 ± 0.71 | 10.00 ± 0.00 | 75.00 ± 35.36 | – |" in md
    # a measures folder without its marker (a run still going, or one that died) is refused
    (exp / "sq_gauss1" / "seed2" / "synthesis_eval" / "complete.json").unlink()
    with pytest.raises(SpeechsqError, match="synthesis_eval is incomplete"):
        report.collect(exp)


def _verdicts(exp):
    return check_claims("sqvae_zerospeech19", exp, report.collect(exp))


def test_difference_of_exactly_two_combined_stds_does_not_hold(tmp_path):
    # seeds 7, 10, 13 (mean 10, sample std 3) and 16, 20, 24 (mean 20, std 4): 10 / sqrt(9 + 16) = 2 exactly
    for seed, (best, worst) in enumerate([(7.0, 16.0), (10.0, 20.0), (13.0, 24.0)], 1):
        _run(tmp_path, "vq_sigma2_0.1", seed, "vq", {"mse_db2": best}, sigma2=0.1)
        _run(tmp_path, "vq_ema_reset_sigma2_10", seed, "vq_ema_reset", {"mse_db2": worst}, sigma2=10.0)  # VQ family too
    sensitivity = _verdicts(tmp_path)[0]
    assert sensitivity.z == 2.0 and sensitivity.status == "does not hold"
    assert "= 2.0 combined std (<= 2)" in sensitivity.detail


def test_parity_holds_when_far_better(tmp_path):
    # sq 10, 12 against the best VQ row 20, 22: better by 10 = -5 combined stds (sqrt(2 + 2) = 2)
    for seed, (vq, sq) in enumerate([(20.0, 10.0), (22.0, 12.0)], 1):
        _run(tmp_path, "vq_ema", seed, "vq_ema", {"mse_db2": vq}, sigma2=0.1)
        _run(tmp_path, "sq_gauss1", seed, "sq_gauss1", {"mse_db2": sq})
    parity = _verdicts(tmp_path)[1]
    assert parity.z == pytest.approx(-5.0, abs=1e-12) and parity.status == "holds"
    assert "better than it by 10.00" in parity.detail


def test_zero_spread_gives_infinite_z(tmp_path):
    # every seed gives the same number: no spread, any gap is infinitely many stds
    for seed in (1, 2):
        _run(tmp_path, "vq_sigma2_0.1", seed, "vq", {"mse_db2": 30.0, "abx_across": 20.0}, sigma2=0.1)
        _run(tmp_path, "vq_sigma2_10", seed, "vq", {"mse_db2": 40.0, "abx_across": 20.0}, sigma2=10.0)
        _run(tmp_path, "sq_gauss1", seed, "sq_gauss1", {"mse_db2": 31.0, "abx_across": 19.0})
    sens_mse, parity_mse, _, sens_abx, parity_abx = _verdicts(tmp_path)
    assert (sens_mse.z, sens_mse.status) == (math.inf, "holds")
    assert (parity_mse.z, parity_mse.status) == (math.inf, "does not hold")  # 1 worse, no spread
    assert (sens_abx.z, sens_abx.status) == (0.0, "does not hold")  # 20 vs 20: 0 / 0 is no difference
    assert (parity_abx.z, parity_abx.status) == (-math.inf, "holds")


def test_rows_needed_for_a_verdict(tmp_path):
    # one row at 2 seeds, the other at 1: the smaller count decides, no spread -> not testable
    for seed in (1, 2):
        _run(tmp_path, "vq_sigma2_0.1", seed, "vq", {"mse_db2": 30.0 + seed}, sigma2=0.1)
    _run(tmp_path, "vq_sigma2_10", 1, "vq", {"mse_db2": 90.0}, sigma2=10.0)
    sensitivity = _verdicts(tmp_path)[0]
    assert sensitivity.status == "not testable" and "2 or more seeds" in sensitivity.detail
    # two VQ rows at one sigma^2 (vq and vq_ema, both 0.1) are no sensitivity test
    same = tmp_path / "same"
    for seed in (1, 2):
        _run(same, "vq", seed, "vq", {"mse_db2": 30.0 + seed}, sigma2=0.1)
        _run(same, "vq_ema", seed, "vq_ema", {"mse_db2": 60.0 + seed}, sigma2=0.1)
    sensitivity = _verdicts(same)[0]
    assert sensitivity.status == "not testable" and "two or more sigma^2" in sensitivity.detail


def test_only_a_fixed_decoder_variance_places_a_vq_row(tmp_path):
    # a VQ row with a learned variance (its sigma2 only an initial value) has no sigma^2 in the grid
    for seed in (1, 2):
        _run(tmp_path, "vq_sigma2_0.1", seed, "vq", {"mse_db2": 30.0 + seed}, sigma2=0.1)
        d = tmp_path / "vq_learned" / f"seed{seed}"
        (d / "eval").mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({"quantizer": {"name": "vq", "likelihood": {
            "name": "gaussian_trainable", "sigma2": 10.0}}, "seed": seed}))
        _metrics(d, {"mse_db2": 90.0 + seed})
    sensitivity = _verdicts(tmp_path)[0]
    assert sensitivity.status == "not testable" and sensitivity.rows == ["vq_sigma2_0.1"]
