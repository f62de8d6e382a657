"""recipes/images: the Table 2 stages and their table, run as a user runs them.

The recipe is copied into a temporary tree so the test never writes into the checkout;
``SPEECHSQ_NO_SETUP=1`` skips the environment check (pytest already runs inside it)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _table2_module():
    sys.path.insert(0, str(REPO / "recipes" / "images" / "local"))  # as when the script runs
    spec = importlib.util.spec_from_file_location("table2", REPO / "recipes" / "images" / "local" / "table2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(label, comparable, **values):
    row = {"dataset": "digits", "images": 300, "generated": 300, "mse_x1e3": 10.0, "rfid": 6.5, "generation": 8.25,
           "neighbor": {"3": 20.0, "10": 40.125}, "interp": 15.0, "prior_test_bits_per_code": 2.5,
           "feature_space": {"label": label, "comparable_to_published_fid": comparable, "valid_accuracy": 0.945}}  # fmt: skip
    row.update(values)
    return row


def test_table2_names_the_rows_and_the_feature_space(tmp_path):
    t2 = _table2_module()
    offline = "FD (speechsq classifier, not comparable to published FID)"
    rows = {"vq_ema": _row(offline, False), "mine": _row(offline, False, generation=None, neighbor={"3": 1.0})}
    text = t2.table(rows)
    lines = text.splitlines()
    assert lines[0] == ("| model | MSE (x1e3) | rFD | Generation (FD) | Neighbor-3 (FD) | Neighbor-10 (FD) | Interp. (FD) "
                        "| prior NLL (bits/code) |")  # fmt: skip
    assert lines[2] == "| VQ-VAE (EMA) (`vq_ema`) | 10.00 | 6.50 | 8.25 | 20.00 | 40.12 | 15.00 | 2.500 |"
    assert lines[3] == "| mine | 10.00 | 6.50 | - | 1.00 | - | 15.00 | 2.500 |"
    caption = t2.caption(rows, "test")
    assert f"distances: {offline}" in caption and "validation accuracy 94.5%" in caption
    standard = {"sq_gauss1": _row("FID (Inception-v3 pool3, torch-fidelity)", True)}
    assert "| Gaussian SQ-VAE (I) (`sq_gauss1`) |" in t2.table(standard) and "| rFID | Generation (FID) |" in t2.table(standard)
    with pytest.raises(ValueError, match="different feature spaces"):
        t2.table({**rows, **standard})
    (tmp_path / "a.json").write_text(json.dumps(rows["vq_ema"]))
    assert t2.main([f"vq_ema={tmp_path / 'a.json'}", "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text().startswith("SQ-VAE Table 2 shape on digits / test (300 images;")
    assert t2.main([f"vq={tmp_path / 'missing.json'}"]) == 2


def copy_recipe(tmp_path: Path) -> Path:
    (tmp_path / "recipes").mkdir()
    shutil.copytree(REPO / "recipes" / "utils", tmp_path / "recipes" / "utils")
    shutil.copytree(REPO / "recipes" / "images", tmp_path / "recipes" / "images", ignore=shutil.ignore_patterns("exp"))
    return tmp_path / "recipes" / "images" / "run.sh"


def run_recipe(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPEECHSQ_NO_SETUP="1", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=900)


def test_help_lists_the_table2_options(tmp_path):
    shown = run_recipe(copy_recipe(tmp_path), "--help")
    assert shown.returncode == 0
    for option in ("--prior-experiment", "--prior-steps", "--inception-weights", "--fd-classifier-steps", "--stop-stage"):
        assert option in shown.stdout
    missing = run_recipe(tmp_path / "recipes" / "images" / "run.sh", "--inception-weights", str(tmp_path / "no.pth"))
    assert missing.returncode == 2 and "no.pth: no such file" in missing.stderr


@pytest.mark.slow
def test_images_recipe_prints_table2_end_to_end_tiny(tmp_path):
    script = copy_recipe(tmp_path)
    done = run_recipe(script, "--steps", "10", "--prior-steps", "10", "--fd-classifier-steps", "20",
                      "--quantizers", "vq sq_gauss1", "--tag", "tiny")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    exp = script.parent / "exp" / "tiny"
    for q in ("vq", "sq_gauss1"):
        assert (exp / q / "codes" / "train" / "complete.json").is_file()
        assert (exp / q / "prior" / "checkpoints" / "last.pt").is_file()
        row = json.loads((exp / q / f"fid_test.json").read_text())
        assert set(row["neighbor"]) == {"3", "5", "10"} and row["generated"] == 300
    table = (exp / "table2_test.md").read_text()
    assert "distances: FD (speechsq classifier, not comparable to published FID)" in table
    assert "| VQ-VAE (`vq`) |" in table and "| Gaussian SQ-VAE (I) (`sq_gauss1`) |" in table
    assert "| MSE (x1e3) |" in (exp / "results_test.md").read_text()  # the stages before Table 2 still run
    assert table.splitlines()[0] in done.stdout
