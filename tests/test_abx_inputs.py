"""ABX inputs: item-file validation with file:line errors, feature coverage, non-finite values,
completion markers, items past the end of their file, counted skips, and the CLI's exit status."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from speechsq.cli import main as speechsq_main
from speechsq.completion import MARKER, mark_complete
from speechsq.errors import IncompleteOutputError, MismatchError
from speechsq.eval.abx import compute_abx
from speechsq.eval.abx_data import (
    ABXInputError,
    ItemFileError,
    item_frame_range,
    normalize_with_singularity,
    read_item_file,
)

HEADER = "#file onset offset #phone prev-phone next-phone speaker"

# s1: a = {0, 2}, b = {1, 4}; s2: a = {0, 0.5}, b = {10, 11} (see test_abx.py: 34.375 % within)
HAND = [("s1", "a", 0.0), ("s1", "a", 2.0), ("s1", "b", 1.0), ("s1", "b", 4.0),
        ("s2", "a", 0.0), ("s2", "a", 0.5), ("s2", "b", 10.0), ("s2", "b", 11.0)]


def _hand_task(root, values=HAND, frames=1):
    """One file per item, ``frames`` 1-D frames of its value; the item covers frame 0."""
    feats = root / "feats"
    feats.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for k, (speaker, phone, value) in enumerate(values):
        name = f"{speaker}_{k}"
        np.save(feats / f"{name}.npy", np.full((frames, 1), value, np.float32))
        lines.append(f"{name} 0.0 0.015 {phone} x y {speaker}")
    item_file = root / "task.item"
    item_file.write_text("\n".join(lines) + "\n")
    return item_file, feats


def _abx(item_file, feats, **kwargs):
    kwargs.setdefault("distance", "euclidean")
    return compute_abx(item_file, feats, normalize=False, max_size_group=None, max_x_across=None,
                       speaker_modes=("within",), context_modes=("within",), **kwargs)


# --------------------------------------------------------------------------- the item file


@pytest.mark.parametrize(
    "body, message",
    [
        ("f1 0.0 0.1 a x y s1\nf2 0.0 0.1 b x y s1\n", r"task\.item:1: the first line must be the header"),
        ("#file onset offset #phone context speaker\nf1 0.0 0.1 a x y s1\n", r"task\.item:1: the header has 6 columns, expected 7"),
        (f"{HEADER}\nf1 0.0 0.1 a x y s1\nf2 0.0 0.1 b x y\n", r"task\.item:3: expected 7 columns .* got 6"),
        (f"{HEADER}\nf1 0.0 zero a x y s1\n", r"task\.item:2: onset/offset are not numbers"),
        (f"{HEADER}\nf1 nan 0.1 a x y s1\n", r"task\.item:2: onset/offset must be finite, got nan 0.1"),
        (f"{HEADER}\nf1 -0.01 0.1 a x y s1\n", r"task\.item:2: negative onset -0.01"),
        (f"{HEADER}\nf1 0.2 0.1 a x y s1\n", r"task\.item:2: onset 0.2 is not before offset 0.1"),
        (f"{HEADER}\nf1 0.1 0.1 a x y s1\n", r"task\.item:2: onset 0.1 is not before offset 0.1"),
        (f"{HEADER}\nf1 0.0 0.1 a x y s1\n\nf1 0.00 0.10 b x y s1\n", r"task\.item:4: repeats the segment of line 2 \(f1 0.00 0.10\)"),
        ("", r"task\.item: empty item file"),
        (f"{HEADER}\n\n", r"task\.item: no items after the header"),
    ],
)
def test_bad_item_files_are_one_line_errors_naming_file_and_line(tmp_path, body, message):
    (tmp_path / "task.item").write_text(body)
    with pytest.raises(ItemFileError, match=message):
        read_item_file(tmp_path / "task.item")


def test_missing_item_file(tmp_path):
    with pytest.raises(ItemFileError, match="item file not found: .*nope.item"):
        read_item_file(tmp_path / "nope.item")


def test_item_file_is_parsed_with_ids_in_order_of_first_appearance(tmp_path):
    path = tmp_path / "task.item"
    path.write_text(f"{HEADER}\nf2 0.5 0.75 b x y s2\n\nf1 0 0.25 a x z s1\nf1 0.25 0.5 b x y s1\n")
    table = read_item_file(path)
    assert table.file_ids == ["f2", "f1", "f1"]
    assert table.onsets.tolist() == [0.5, 0.0, 0.25] and table.offsets.tolist() == [0.75, 0.25, 0.5]
    assert table.phone.tolist() == [0, 1, 0] and table.phone_names == ["b", "a"]
    assert table.context.tolist() == [0, 1, 0] and table.context_names == ["x+y", "x+z"]
    assert table.speaker.tolist() == [0, 1, 1] and table.speaker_names == ["s2", "s1"]
    assert table.line_numbers.tolist() == [2, 4, 5]
    assert table.where(1) == f"{path}:4"


def test_item_past_the_end_of_its_file_is_an_error_beyond_one_frame_of_tolerance(tmp_path):
    item_file, feats = _hand_task(tmp_path, frames=10)  # 10 frames of 10 ms: 0.1 s
    lines = item_file.read_text().splitlines()
    lines[3] = lines[3].replace("0.0 0.015", "0.0 0.11")  # one frame shift late: rounding, accepted
    item_file.write_text("\n".join(lines) + "\n")
    assert _abx(item_file, feats).inputs["n_items_used"] == 8
    lines[3] = lines[3].replace("0.0 0.11", "0.0 0.111")
    item_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ItemFileError, match=r"task\.item:4: offset 0\.111 s is past the end of s1_2 in .*feats "
                                             r"\(10 frames = 0\.1 s at 0\.01 s per frame; 1 such items\)"):
        _abx(item_file, feats)


def test_frame_slicing_and_normalisation_follow_the_reference():
    # frame k centred at offset + k * shift; an item keeps [ceil(r (t0 - o) - 1/2), floor(r (t1 - o) - 1/2))
    assert item_frame_range(0.0, 0.05, 100, 100.0, 0.0) == (0, 4)
    assert item_frame_range(0.013, 0.052, 100, 100.0, 0.0) == (1, 4)
    assert item_frame_range(0.5, 2.0, 10, 100.0, 0.0) == (50, 10)  # beyond the file: empty
    assert item_frame_range(0.0, 0.05, 100, 100.0, 0.005) == (0, 4)
    assert item_frame_range(0.02, 0.07, 100, 100.0, 0.01) == (1, 5)
    frames = np.array([[3.0, 4.0], [0.0, 0.0]])
    # unit norm plus a 1e-12 coordinate; an all-zero frame becomes the reference's singular point
    expected = np.array([[0.6, 0.8, 1e-12], [1 / np.sqrt(2), 1 / np.sqrt(2), -2e12]], np.float32)
    np.testing.assert_array_equal(normalize_with_singularity(frames), expected)


# --------------------------------------------------------------------------- coverage


def test_partial_features_are_refused_with_counts(tmp_path):
    item_file, feats = _hand_task(tmp_path)
    (feats / "s2_7.npy").unlink()
    with pytest.raises(MismatchError, match=r"1 of the 8 utterances of the item file .*task\.item are missing from "
                                            r".*feats \(e\.g\. s2_7\): 1 of 8 items cannot be scored; .*--allow-missing"):
        _abx(item_file, feats)


def test_allow_missing_scores_the_rest_and_counts_what_is_missing(tmp_path):
    item_file, feats = _hand_task(tmp_path)
    (feats / "s2_7.npy").unlink()  # s2's b = {10} alone: s2 (b|a) has a single A and no cell
    result = _abx(item_file, feats, allow_missing=True)
    # (a|b): (0.625 + 0) / 2; (b|a): s1 only, 0.75; mean 0.53125
    assert result.scores == {"within-within": 53.125}
    inputs = result.inputs
    assert (inputs["missing_files"], inputs["items_missing_file"], inputs["n_items_used"], inputs["n_items"]) == (1, 1, 7, 8)
    assert inputs["examples"]["missing_files"] == ["s2_7"]
    assert result.settings["allow_missing"] is True


@pytest.mark.parametrize("allow_missing", [False, True])
def test_features_of_other_files_only_are_an_error_even_with_allow_missing(tmp_path, allow_missing):
    item_file, _ = _hand_task(tmp_path / "task")
    _, other = _hand_task(tmp_path / "other", values=[("t9", "a", 0.0)])
    with pytest.raises(MismatchError, match=r"none of the 8 files of the item file .* has features in .*other/feats "
                                            r"\(1 feature files, e\.g\. t9_0; item files e\.g\. s1_0, s1_1, s1_2\)"):
        _abx(item_file, other, allow_missing=allow_missing)


def test_empty_or_missing_feature_directory(tmp_path):
    item_file, _ = _hand_task(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ABXInputError, match=r"empty holds no features \(\*\.npy files\)"):
        _abx(item_file, tmp_path / "empty")
    with pytest.raises(ABXInputError, match=r"feature directory not found: .*nowhere"):
        _abx(item_file, tmp_path / "nowhere")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_the_file_and_frame(tmp_path, bad):
    item_file, feats = _hand_task(tmp_path, frames=4)
    array = np.zeros((4, 1), np.float32)
    array[2, 0] = bad
    np.save(feats / "s1_1.npy", array)
    with pytest.raises(ABXInputError, match=r"features of s1_1 in .*feats have non-finite values \(NaN/Inf\), first in frame 2"):
        _abx(item_file, feats)


def test_feature_shapes_and_units_are_checked(tmp_path):
    item_file, feats = _hand_task(tmp_path, values=[(s, p, float(k)) for k, (s, p, _) in enumerate(HAND)], frames=2)
    np.save(feats / "s1_1.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ABXInputError, match=r"features of s1_\d in .*feats have dim [13], earlier files have [13]"):
        _abx(item_file, feats)
    with pytest.raises(ABXInputError, match=r"discrete units need one column per frame, s1_1 in .*feats has 3"):
        _abx(item_file, feats, distance="edit")
    np.save(feats / "s1_1.npy", np.full((2, 1), 0.5))
    with pytest.raises(ABXInputError, match=r"discrete units of s1_1 in .*feats are not integers"):
        _abx(item_file, feats, distance="edit")


# --------------------------------------------------------------------------- counted skips


def test_items_shorter_than_a_frame_and_negative_kl_items_are_counted(tmp_path):
    values = HAND + [("s1", "a", 3.0)]
    item_file, feats = _hand_task(tmp_path, values=values, frames=2)
    lines = item_file.read_text().splitlines()
    lines[-1] = lines[-1].replace("0.0 0.015", "0.012 0.014")  # no frame centre inside
    item_file.write_text("\n".join(lines) + "\n")
    result = _abx(item_file, feats)
    assert result.scores == {"within-within": 34.375}  # the hand task's score: the short item is out
    assert (result.inputs["empty_items"], result.inputs["n_items_used"]) == (1, 8)
    assert result.inputs["examples"]["empty_items"] == [f"{item_file}:10: s1_8 0.012 0.014"]


def test_negative_values_under_kl_are_counted_and_all_negative_is_an_error(tmp_path):
    values = [(s, p, 1.0) for s in ("s1", "s2") for p in "aabb"]
    item_file, feats = _hand_task(tmp_path, values=values)
    for k in range(8):
        np.save(feats / f"{values[k][0]}_{k}.npy", np.array([[0.25, 0.75]] if values[k][1] == "a" else [[0.75, 0.25]]))
    np.save(feats / "s1_0.npy", np.array([[-0.5, 1.5]]))
    result = compute_abx(item_file, feats, distance="kl", normalize=False, max_size_group=None, max_x_across=None,
                         speaker_modes=("within",), context_modes=("within",))
    assert (result.inputs["negative_items"], result.inputs["n_items_used"]) == (1, 7)
    assert result.scores == {"within-within": 0.0}
    for k in range(8):
        np.save(feats / f"{values[k][0]}_{k}.npy", -np.ones((1, 2)))
    with pytest.raises(ABXInputError, match=r"no item of .*task\.item can be scored: 8 items, 0 without features, "
                                            r"0 shorter than one frame, 8 with negative values"):
        compute_abx(item_file, feats, distance="kl_symmetric", normalize=False)


def test_no_cell_in_any_condition_is_none_in_the_api_and_an_error_on_the_command_line(tmp_path, capsys):
    item_file, feats = _hand_task(tmp_path, values=[("s1", "a", 0.0), ("s1", "a", 1.0), ("s2", "a", 2.0)])
    result = compute_abx(item_file, feats)  # evaluate reports None (its own callers decide)
    assert result.scores == dict.fromkeys(["within-within", "across-within", "within-any", "across-any"])
    assert result.n_cells == dict.fromkeys(result.scores, 0)
    assert speechsq_main(["abx", "--items", str(item_file), "--features", str(feats), "--threads", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "speechsq abx: error: no ABX cell in any of the conditions within-within, across-within, within-any, "
        "across-any: 3 usable items, but no speaker has two phones in one context (and, within speaker, two items "
        "of a phone)")


# --------------------------------------------------------------------------- completion markers


def test_a_complete_marker_that_lists_the_files_is_accepted_and_reported(tmp_path):
    item_file, feats = _hand_task(tmp_path)
    mark_complete(feats, "features", [f"{s}_{k}" for k, (s, _, _) in enumerate(HAND)], producer="speechsq compute-feats")
    result = _abx(item_file, feats)
    assert result.scores == {"within-within": 34.375}
    assert result.inputs["completion"] == {"marker": str(feats / MARKER), "kind": "features", "count": 8,
                                           "producer": "speechsq compute-feats"}


def test_units_marker_of_an_extract_directory_covers_its_subdirectories(tmp_path):
    item_file, feats = _hand_task(tmp_path / "units" / "test")
    indices = feats.rename(tmp_path / "units" / "test" / "indices")
    mark_complete(tmp_path / "units" / "test", "units", [f"{s}_{k}" for k, (s, _, _) in enumerate(HAND)], producer="speechsq extract")
    result = _abx(item_file, indices)
    assert result.inputs["completion"]["marker"] == str(tmp_path / "units" / "test" / MARKER)
    (indices / "s1_0.npy").unlink()  # removed after extract finished
    with pytest.raises(MismatchError, match=r"indices holds 7 feature files but its marker .*units/test/complete\.json "
                                            r"was written for 8 utterances .* run speechsq extract again"):
        _abx(item_file, indices, allow_missing=True)


def test_units_marker_two_levels_up_covers_the_zerospeech_tree(tmp_path):
    """extract --zerospeech writes units/<set>/zerospeech/test/: its marker is two levels up."""
    item_file, feats = _hand_task(tmp_path / "units" / "test")
    (tmp_path / "units" / "test" / "zerospeech").mkdir()
    tree = feats.rename(tmp_path / "units" / "test" / "zerospeech" / "test")
    mark_complete(tmp_path / "units" / "test", "units", [f"{s}_{k}" for k, (s, _, _) in enumerate(HAND)], producer="speechsq extract")
    assert _abx(item_file, tree).inputs["completion"]["marker"] == str(tmp_path / "units" / "test" / MARKER)
    np.save(tree / "stray.npy", np.zeros((1, 1)))
    with pytest.raises(MismatchError, match=r"test holds 9 feature files but its marker .*units/test/complete\.json"):
        _abx(item_file, tree)


def test_a_file_added_after_completion_is_a_mismatch(tmp_path):
    item_file, feats = _hand_task(tmp_path)
    mark_complete(feats, "features", [f"{s}_{k}" for k, (s, _, _) in enumerate(HAND)], producer="speechsq compute-feats")
    np.save(feats / "stray.npy", np.zeros((1, 1)))
    with pytest.raises(MismatchError, match=r"feats holds 9 feature files but its marker"):
        _abx(item_file, feats)


def test_malformed_or_foreign_markers_are_refused(tmp_path):
    item_file, feats = _hand_task(tmp_path)
    (feats / MARKER).write_text("{not json")
    with pytest.raises(IncompleteOutputError, match=r"complete\.json is malformed"):
        _abx(item_file, feats)
    mark_complete(feats, "eval", ["x"], producer="speechsq evaluate")
    with pytest.raises(MismatchError, match=r"marks 'eval' output, not features or units"):
        _abx(item_file, feats)


def test_a_directory_without_marker_is_used_with_a_log_line(tmp_path, caplog):
    item_file, feats = _hand_task(tmp_path)
    with caplog.at_level(logging.INFO, logger="speechsq.eval.abx_data"):
        result = _abx(item_file, feats)
    assert result.inputs["completion"] is None
    assert f"{feats} has no completion marker (complete.json): using its 8 feature files as they are" in caplog.text


def test_compute_feats_directory_is_read_through_feats_scp_and_its_marker(tmp_path):
    from speechsq.features.store import ArkWriter, FeatureReader

    item_file, npy_dir = _hand_task(tmp_path)
    ark_dir = tmp_path / "ark"
    writer = ArkWriter(ark_dir)
    for path in sorted(npy_dir.glob("*.npy")):
        writer.write(path.stem, np.load(path).astype(np.float32))
    writer.commit()
    with pytest.raises(MismatchError, match="was written for 7 utterances"):
        mark_complete(ark_dir, "features", [f"{s}_{k}" for k, (s, _, _) in enumerate(HAND)][:7], producer="speechsq compute-feats")
        _abx(item_file, ark_dir)
    mark_complete(ark_dir, "features", [f"{s}_{k}" for k, (s, _, _) in enumerate(HAND)], producer="speechsq compute-feats")
    for features in (ark_dir, FeatureReader(ark_dir)):
        result = _abx(item_file, features)
        assert result.scores == {"within-within": 34.375}
        assert result.inputs["completion"]["kind"] == "features"


# --------------------------------------------------------------------------- the command line


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    item_file, feats = _hand_task(tmp_path)
    (feats / "s2_7.npy").unlink()
    args = ["abx", "--items", str(item_file), "--features", str(feats), "--distance", "euclidean", "--no-normalize",
            "--no-subsample", "--mode", "within", "--context", "within", "--threads", "1"]
    assert speechsq_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("speechsq abx: error: 1 of the 8 utterances of the item file")
    assert speechsq_main(args + ["--allow-missing"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "within   within      53.12         3"
    (tmp_path / "empty").mkdir()
    assert speechsq_main(args[:4] + [str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip() == f"speechsq abx: error: {tmp_path / 'empty'} holds no features (*.npy files); " \
                                              "pass the directory with one <file>.npy per file of the item file"
