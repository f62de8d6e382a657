"""The Kaldi-style recipes, run as a user runs them (bash), on a tiny embedded corpus.

The recipe folders are copied into a temporary tree so the test never writes into the
checkout; ``SPEECHSQ_NO_SETUP=1`` skips the environment check because pytest already runs
inside the environment (its bin/ is put first on PATH).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE_KEYS = {"mse_db2", "abx_across", "abx_within", "bitrate", "perplexity", "active_codes"}



@pytest.fixture
def espeak():
    from external_tools import require_espeak

    require_espeak()  # the README set-up installs it: missing is a failure, not a skip


def copy_recipe(tmp_path: Path, name: str) -> Path:
    (tmp_path / "recipes").mkdir()
    for shared in ("utils", "steps"):
        shutil.copytree(REPO / "recipes" / shared, tmp_path / "recipes" / shared)
    shutil.copytree(REPO / "recipes" / name, tmp_path / "recipes" / name,
                    ignore=shutil.ignore_patterns("corpus", "data", "feats", "exp"))
    return tmp_path / "recipes" / name / "run.sh"


def run_recipe(script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPEECHSQ_NO_SETUP="1", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_help_lists_options_and_unknown_options_fail(tmp_path):
    script = copy_recipe(tmp_path, "zerospeech19")
    # run from the recipe's parent with a relative path, as the README does
    env = dict(os.environ, SPEECHSQ_NO_SETUP="1")
    shown = subprocess.run(["bash", "recipes/zerospeech19/run.sh", "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    for option in ("--corpus", "--quantizers", "--seeds", "--config", "--tag", "--nj", "--ngpu", "--stage", "--stop-stage"):
        assert option in shown.stdout
    bad = run_recipe(script, "--quantiser", "vq")
    assert bad.returncode == 2
    assert "unknown option --quantiser" in bad.stderr


def test_missing_corpus_is_a_clear_error(tmp_path):
    script = copy_recipe(tmp_path, "zerospeech19")
    done = run_recipe(script, "--corpus", str(tmp_path / "nowhere"), "--stop-stage", "1")
    assert done.returncode != 0
    assert "nowhere" in done.stderr and "not found" in done.stderr


def _mean_std(values):
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def test_zerospeech19_recipe_end_to_end_tiny(tmp_path, espeak):
    script = copy_recipe(tmp_path, "zerospeech19")
    recipe = script.parent
    args = ("--corpus-utterances", "60", "--train-steps", "60", "--quantizers", "vq_ema sq_gauss1",
            "--vq-sigma2", "0.1 10", "--seeds", "1 2", "--train-nj", "2", "--synth-limit", "3", "--tag", "tiny")
    first = run_recipe(script, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[train] 6 run(s) to train, 2 at a time, 1 thread(s) each" in first.stdout

    # the runs: the VQ family over the sigma^2 grid, SQ-VAE as it is, each seed
    exp = recipe / "exp/tiny"
    assert (exp / "runs.txt").read_text() == (
        "vq_ema_sigma2_0.1 vq_ema 1 quantizer.likelihood.sigma2=0.1\n"
        "vq_ema_sigma2_0.1 vq_ema 2 quantizer.likelihood.sigma2=0.1\n"
        "vq_ema_sigma2_10 vq_ema 1 quantizer.likelihood.sigma2=10\n"
        "vq_ema_sigma2_10 vq_ema 2 quantizer.likelihood.sigma2=10\n"
        "sq_gauss1 sq_gauss1 1\n"
        "sq_gauss1 sq_gauss1 2\n"
    )
    # every stage left its outputs
    assert (recipe / "corpus/embedded/test").is_dir()
    for s in ("train", "parallel", "test"):
        assert (recipe / f"data/{s}/wav.scp").is_file()
        assert (recipe / f"feats/{s}/feats.scp").is_file()
    assert (recipe / "data/test/items").is_file()
    n_test = len((recipe / "data/test/wav.scp").read_text().splitlines())
    per_run = {}
    for row, sigma2 in (("vq_ema_sigma2_0.1", 0.1), ("vq_ema_sigma2_10", 10.0), ("sq_gauss1", None)):
        for seed in (1, 2):
            run = exp / row / f"seed{seed}"
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert cfg["seed"] == seed and cfg["training"]["steps"] == 60
            assert cfg["quantizer"]["likelihood"].get("sigma2") == sigma2 if sigma2 else cfg["quantizer"]["likelihood"]["name"] == "gaussian_closed_form"
            assert (run / "checkpoints/last.pt").is_file()
            submission = run / "units" / "zerospeech"
            assert (submission / "metadata.yaml").is_file()
            assert len(list((submission / "test").glob("*.txt"))) == n_test
            per_run[row, seed] = json.loads((run / "eval/metrics.json").read_text())

    # results.json is exactly the per-seed numbers, summarised
    results = json.loads((exp / "results.json").read_text())
    assert results["baseline"] == {k: json.loads((exp / "baseline/eval/metrics.json").read_text())[k] for k in ("abx_across", "abx_within")}
    for row in ("vq_ema_sigma2_0.1", "vq_ema_sigma2_10", "sq_gauss1"):
        metrics = results["quantizers"][row]["metrics"]
        assert RECIPE_KEYS <= set(metrics), metrics.keys()
        for key in ("mse_db2", "abx_across", "bitrate", "perplexity"):
            values = [per_run[row, seed][key] for seed in (1, 2)]
            assert metrics[key]["values"] == values
            assert (metrics[key]["mean"], metrics[key]["std"]) == pytest.approx(_mean_std(values), abs=1e-12)
    table = (exp / "results.md").read_text()
    assert "| VQ-VAE w/ EMA (σ² = 10) | 2 |" in table and "log-Mel baseline" in table
    # speech out: the first seed of each run, 3 test utterances in V001 and V002: the first of
    # each of the first 3 test speakers (--limit takes each speaker in turn)
    first_of_speaker: dict[str, str] = {}
    for line in (recipe / "data/test/utt2spk").read_text().splitlines():
        utt, speaker = line.split()
        first_of_speaker.setdefault(speaker, utt)
    assert len(first_of_speaker) >= 3
    spoken_utts = sorted(first_of_speaker.values())[:3]
    assert (exp / "synthesis_runs.txt").read_text() == "".join(
        line + "\n" for line in (exp / "runs.txt").read_text().splitlines() if line.split()[2] == "1")
    for row in ("vq_ema_sigma2_0.1", "vq_ema_sigma2_10", "sq_gauss1"):
        test_out = exp / row / "seed1/synthesis/test"
        assert sorted(p.name for p in (test_out / "V001").glob("*.wav")) == [u + ".wav" for u in spoken_utts]
        assert len(list((test_out / "zerospeech/test").glob("V00[12]_*.wav"))) == 6
        assert results["quantizers"][row]["synthesis"]["conversion_speaker_match"]["n"] == 1
        assert not (exp / row / "seed2/synthesis").exists()
    assert "### Speech out (Griffin-Lim)" in table
    claims = results["claims"]
    assert claims["set"] == "sqvae_zerospeech19"
    assert [c["status"] for c in claims["results"]][2] == "not testable"  # no sq_gauss4 row
    assert "### Paper claims, checked on this run (sqvae_zerospeech19)" in table

    # re-running skips finished work (no training, no feature extraction) ...
    again = run_recipe(script, *args)
    assert again.returncode == 0
    assert "stage 3: training" in again.stdout  # the stage header is logged, its jobs are skipped
    assert "[train] 0 run(s) to train" in again.stdout and "[extract]" not in again.stdout
    # ... and an explicit --stage redoes from there
    redo = run_recipe(script, *args, "--stage", "7")
    assert redo.returncode == 0 and "stage 7: report" in redo.stdout

    # a corpus without an ABX item file fails in stage 1, before any training, with the fix
    corpus = tmp_path / "no_items"
    shutil.copytree(recipe / "corpus/embedded", corpus)
    (corpus / "alignments/test.item").unlink()
    no_items = run_recipe(script, "--corpus", str(corpus), "--tag", "noitems", "--stage", "1")
    assert no_items.returncode == 2
    assert "no ABX item file for the test set" in no_items.stderr and "--items PATH" in no_items.stderr
    assert "stage 3" not in no_items.stdout and not list((recipe / "exp/noitems").glob("*/seed*"))
    # ... and --items supplies it
    with_items = run_recipe(script, "--corpus", str(corpus), "--items", str(recipe / "corpus/embedded/alignments/test.item"),
                            "--tag", "noitems", "--stage", "1", "--stop-stage", "1")
    assert with_items.returncode == 0, with_items.stderr[-2000:]
    assert (recipe / "data/test/items").read_bytes() == (recipe / "corpus/embedded/alignments/test.item").read_bytes()
