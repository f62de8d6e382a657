import pytest

from speechsq import cli
from speechsq.data_prep.make_items import make_items


def _write(tmp_path, ali_lines, spk_lines):
    (tmp_path / "ali").write_text("".join(line + "\n" for line in ali_lines))
    (tmp_path / "utt2spk").write_text("".join(line + "\n" for line in spk_lines))
    return str(tmp_path / "ali"), str(tmp_path / "utt2spk"), str(tmp_path / "items")


def test_one_item_per_phone_between_two_phones(tmp_path):
    ali, spk, out = _write(tmp_path, [
        "S101_0000000001 0.0 0.1 SIL", "S101_0000000001 0.1 0.2 a", "S101_0000000001 0.2 0.3 b",
        "S101_0000000001 0.3 0.45 c", "S101_0000000001 0.45 0.5 d", "S101_0000000001 0.5 0.6 SIL",
    ], ["S101_0000000001 S101"])
    assert make_items(ali, spk, out) == 2
    assert (tmp_path / "items").read_text() == (
        "#file onset offset #phone prev-phone next-phone speaker\n"
        "S101_0000000001 0.2000 0.3000 b a c S101\n"
        "S101_0000000001 0.3000 0.4500 c b d S101\n"
    )


def test_unknown_utterance_and_no_items_are_one_line_errors(tmp_path, capsys):
    ali, spk, out = _write(tmp_path, ["u1 0.0 0.1 a", "u1 0.1 0.2 b", "u1 0.2 0.3 c"], ["u2 s2"])
    assert cli.main(["make-items", "--ali", ali, "--utt2spk", spk, "--out", out]) == 2
    assert capsys.readouterr().err == f"speechsq make-items: error: 1 utterance(s) of {ali} are not in {spk} (e.g. u1)\n"
    ali, spk, out = _write(tmp_path, ["u1 0.0 0.1 a", "u1 0.1 0.2 SIL", "u1 0.2 0.3 c"], ["u1 s1"])
    assert cli.main(["make-items", "--ali", ali, "--utt2spk", spk, "--out", out]) == 2
    assert "no phone with two non-silence neighbours" in capsys.readouterr().err
    assert not (tmp_path / "items").exists()
