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

REPO = Path(__file__).resolve().parents[1]
RECIPE_KEYS = {"mse_db2", "abx_across", "abx_within", "bitrate", "perplexity", "active_codes"}

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


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


@needs_espeak
def test_zerospeech19_recipe_end_to_end_tiny(tmp_path):
    script = copy_recipe(tmp_path, "zerospeech19")
    recipe = script.parent
    args = ("--corpus-utterances", "60", "--train-steps", "100", "--quantizers", "vq_ema sq_gauss1", "--tag", "tiny")
    first = run_recipe(script, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[train] vq_ema seed 1" in first.stdout

    # every stage left its outputs
    assert (recipe / "corpus/embedded/test").is_dir()
    for s in ("train", "parallel", "test"):
        assert (recipe / f"data/{s}/wav.scp").is_file()
        assert (recipe / f"feats/{s}/feats.scp").is_file()
    assert (recipe / "data/test/items").is_file()
    exp = recipe / "exp/tiny"
    for q in ("vq_ema", "sq_gauss1"):
        run = exp / q / "seed1"
        assert (run / "checkpoints/last.pt").is_file()
        assert any((run / "units").rglob("*.npy"))
        submission = run / "units" / "zerospeech"
        assert (submission / "metadata.yaml").is_file()
        assert len(list((submission / "test").glob("*.txt"))) == len((recipe / "data/test/wav.scp").read_text().splitlines())
        assert (run / "eval/metrics.json").is_file()

    results = json.loads((exp / "results.json").read_text())
    table = (exp / "results.md").read_text()
    assert "log-Mel baseline" in table
    assert set(results["baseline"]) == {"abx_across", "abx_within"}
    for q in ("vq_ema", "sq_gauss1"):
        metrics = results["quantizers"][q]["metrics"]
        assert RECIPE_KEYS <= set(metrics), metrics.keys()
        assert metrics["mse_db2"]["mean"] > 0
        assert 0 <= metrics["abx_across"]["mean"] <= 100
        assert metrics["perplexity"]["mean"] >= 1

    # re-running skips finished work (no training, no feature extraction) ...
    again = run_recipe(script, *args)
    assert again.returncode == 0
    assert "stage 3: training" in again.stdout  # the stage header is logged, its jobs are skipped
    assert "[train]" not in again.stdout and "[extract]" not in again.stdout
    # ... and an explicit --stage redoes from there
    redo = run_recipe(script, *args, "--stage", "6")
    assert redo.returncode == 0 and "stage 6: report" in redo.stdout
