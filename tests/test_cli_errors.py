"""Every data/eval command turns an ordinary user error into one line naming the file, exit 2."""

from __future__ import annotations

import json

import pytest

from speechsq import cli
from speechsq.completion import mark_complete


def setup_make_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus/old.wav").write_bytes(b"x")
    return ["make-corpus", "--out", str(tmp_path / "corpus")], tmp_path / "corpus", "exists and is not empty"


def setup_prepare_data(tmp_path):
    return (["prepare-data", "--corpus", "zerospeech19", "--root", str(tmp_path / "english"), "--out", str(tmp_path / "data")],
            tmp_path / "english", "missing directory")


def setup_validate_data_dir(tmp_path):
    return ["validate-data-dir", str(tmp_path / "data/test")], tmp_path / "data/test", "no such data directory"


def setup_compute_feats(tmp_path):
    return (["compute-feats", "--data-dir", str(tmp_path / "data/train"), "--out", str(tmp_path / "feats")],
            tmp_path / "data/train", "no such data directory")


def setup_extract(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/utt2spk").write_text("s1_a s1\n")
    return (["extract", "--checkpoint", str(tmp_path / "last.pt"), "--data-dir", str(tmp_path / "data"),
             "--feats", str(tmp_path / "feats/test"), "--out", str(tmp_path / "units")],
            tmp_path / "feats/test", "does not exist; run `speechsq compute-feats` again")


def setup_evaluate(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not read before the inputs are checked")
    (tmp_path / "units/indices").mkdir(parents=True)  # an extraction that never finished
    return (["evaluate", "--checkpoint", str(tmp_path / "last.pt"), "--exp-dir", str(tmp_path / "run"),
             "--units", str(tmp_path / "units")], tmp_path / "units", "is incomplete (no complete.json")


def setup_report(tmp_path):
    metrics = tmp_path / "exp/vq_ema/seed1/eval/metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"mse_db2": 3')
    mark_complete(metrics.parent, "eval", ["metrics.json"], producer="test")
    return ["report", "--exp-dir", str(tmp_path / "exp")], metrics, "is not valid JSON"


SETUPS = {
    "make-corpus": setup_make_corpus, "prepare-data": setup_prepare_data, "validate-data-dir": setup_validate_data_dir,
    "compute-feats": setup_compute_feats, "extract": setup_extract, "evaluate": setup_evaluate, "report": setup_report,
}


@pytest.mark.parametrize("command", sorted(SETUPS))
def test_user_error_is_one_line_naming_the_file(tmp_path, capsys, command):
    argv, named, says = SETUPS[command](tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"speechsq {command}: error: ")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]
    assert str(named) in errors[0] and says in errors[0]


@pytest.mark.parametrize("argv,message", [
    (["make-corpus", "--out", "x", "--utterances", "0"], "argument --utterances: must be a positive integer, got '0'"),
    (["make-corpus", "--out", "x", "--utterances", "-5"], "argument --utterances: must be a positive integer, got '-5'"),
    (["compute-feats", "--data-dir", "d", "--out", "f", "--nj", "0"], "argument --nj: must be a positive integer, got '0'"),
    (["extract", "--checkpoint", "c", "--wav", "w", "--out", "o", "--batch-size", "0"],
     "argument --batch-size: must be a positive integer, got '0'"),
])
def test_bad_numbers_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_prepare_data_writes_its_report_even_when_it_fails(tmp_path):
    cli.main(["prepare-data", "--corpus", "zerospeech19", "--root", str(tmp_path / "english"), "--out", str(tmp_path / "data")])
    report = json.loads((tmp_path / "data/prep_report.json").read_text())
    assert report["error"].startswith("CorpusLayoutError: missing directory") and report["subsets"] == {}
