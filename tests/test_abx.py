"""ABX: DTW and edit distance against plain loops, hand-built tasks with known answers, a
naive triplet-by-triplet ABX, edge cases, and agreement with zerospeech-libriabx2."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from collections import defaultdict

import numpy as np
import pytest

from speechsq.eval.abx import compute_abx, main
from speechsq.eval.abx_data import build_dataset, item_frame_range, read_item_file
from speechsq.eval.abx_synthetic import make_synthetic_abx_task
from speechsq.eval.dtw import dtw_batch, dtw_naive, edit_distance_batch

HEADER = "#file onset offset #phone prev-phone next-phone speaker"


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("ties", [False, True])
def test_batched_dtw_equals_naive_double_loop(ties):
    rng = np.random.default_rng(1)
    for n, m in [(1, 1), (1, 5), (4, 1), (3, 7), (6, 6), (9, 4)]:
        dist = rng.integers(0, 3, (25, n, m)) if ties else rng.random((25, n, m))
        dist = dist.astype(np.float32)
        batched = dtw_batch(dist)
        assert [float(v) for v in batched] == [dtw_naive(d) for d in dist]


def test_dtw_path_normalisation_on_known_matrices():
    # identical sequences: the diagonal path of length 3 with zero cost
    assert dtw_batch(np.zeros((1, 3, 3), np.float32))[0] == 0
    # 1 x m: one path through every cell, cost = sum / m
    row = np.array([[[1.0, 2.0, 3.0, 6.0]]], np.float32)
    assert dtw_batch(row)[0] == pytest.approx(12.0 / 4)
    # diagonal preferred: 2x2 of ones costs 2 along a 2-step path
    assert dtw_batch(np.ones((1, 2, 2), np.float32))[0] == pytest.approx(1.0)


def test_dtw_matches_libri_light_compiled_dtw():
    dtw_ref = pytest.importorskip("libri_light_dtw")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for n, m in [(2, 3), (5, 5), (8, 3)]:
        dist = rng.integers(0, 4, (30, n, m)).astype(np.float32)
        ref = dtw_ref.dtw_batch(None, None, torch.full((30,), n), torch.full((1,), m), dist[:, None], False, False)[:, 0]
        np.testing.assert_array_equal(dtw_batch(dist), ref.numpy())


def _levenshtein(a, b):
    table = np.zeros((len(a) + 1, len(b) + 1), int)
    table[:, 0], table[0, :] = np.arange(len(a) + 1), np.arange(len(b) + 1)
    for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
        table[i, j] = min(table[i - 1, j] + 1, table[i, j - 1] + 1, table[i - 1, j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1, -1] / max(len(a), len(b))


def test_edit_distance_equals_levenshtein():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 3, (40, 5)), rng.integers(0, 3, (40, 7))
    expected = [_levenshtein(x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(edit_distance_batch(a, b), expected, rtol=1e-6)
    assert edit_distance_batch(np.array([[1, 2, 3]]), np.array([[1, 2, 3]]))[0] == 0


# --------------------------------------------------------------------------- hand-built tasks


def _write_task(tmp_path, files: dict[str, np.ndarray], items: list[str], ext=".npy"):
    feat_dir = tmp_path / "feats"
    feat_dir.mkdir(exist_ok=True)
    for name, array in files.items():
        if ext == ".npy":
            np.save(feat_dir / f"{name}.npy", array)
        else:
            np.savetxt(feat_dir / f"{name}.txt", array)
    item_file = tmp_path / "task.item"
    item_file.write_text("\n".join([HEADER] + items) + "\n")
    return item_file, feat_dir


def _two_phone_task(tmp_path, speaker_b_swapped: bool, ext=".npy"):
    """Two speakers, phones a/b in context x_y, three tokens each; each token 3 frames."""
    proto = {"a": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0, 1.0, 0.0])}
    rng = np.random.default_rng(0)
    files, items = {}, []
    for spk in ("s1", "s2"):
        for k, phone in enumerate(["a", "a", "a", "b", "b", "b"]):
            shown = phone
            if spk == "s2" and speaker_b_swapped:
                shown = "b" if phone == "a" else "a"
            name = f"{spk}_{k}"
            files[name] = np.tile(proto[shown], (3, 1)) + 0.01 * rng.random((3, 3))
            items.append(f"{name} 0.0 0.035 {phone} x y {spk}")  # frames 0..2
    return _write_task(tmp_path, files, items, ext)


def test_separable_phones_give_zero_error(tmp_path):
    item_file, feat_dir = _two_phone_task(tmp_path, speaker_b_swapped=False)
    result = compute_abx(item_file, feat_dir, max_size_group=None, max_x_across=None)
    assert result.scores == {"within-within": 0.0, "across-within": 0.0, "within-any": 0.0, "across-any": 0.0}
    assert result.inputs["n_items_used"] == 12


def test_swapped_speaker_gives_full_error_across_and_none_within(tmp_path):
    item_file, feat_dir = _two_phone_task(tmp_path, speaker_b_swapped=True)
    result = compute_abx(item_file, feat_dir, max_size_group=None, max_x_across=None)
    assert result.scores["within-within"] == 0.0  # each speaker is consistent with itself
    assert result.scores["across-within"] == 100.0  # X of one speaker looks like B of the other


def test_identical_features_tie_at_fifty_percent(tmp_path):
    files = {f"s{s}_{k}": np.ones((4, 2)) for s in (1, 2) for k in range(4)}
    items = [f"s{s}_{k} 0.0 0.04 {'ab'[k % 2]} x y s{s}" for s in (1, 2) for k in range(4)]
    item_file, feat_dir = _write_task(tmp_path, files, items)
    result = compute_abx(item_file, feat_dir, max_size_group=None, max_x_across=None)
    assert all(v == 50.0 for v in result.scores.values())


def test_txt_features_give_the_same_scores_as_npy(tmp_path):
    task = make_synthetic_abx_task(tmp_path / "syn_npy", n_items=120, n_speakers=2, seed=4)
    task_txt = make_synthetic_abx_task(tmp_path / "syn_txt", n_items=120, n_speakers=2, seed=4, extension=".txt")
    a = compute_abx(task.item_file, task.feature_dir, max_size_group=None, max_x_across=None)
    b = compute_abx(task_txt.item_file, task_txt.feature_dir, extension=".txt", max_size_group=None, max_x_across=None)
    for key in a.scores:
        assert a.scores[key] == pytest.approx(b.scores[key], abs=0.05)  # .txt keeps 6 decimals


# --------------------------------------------------------------------------- naive reference


def _naive_abx(dataset, distance, speaker_mode, context_mode):
    """Triplet-by-triplet ABX with plain loops (no subsampling), the same definition."""
    n = len(dataset)
    key = (lambda i: (dataset.speaker[i], dataset.phone[i])) if context_mode == "any" else (
        lambda i: (dataset.context[i], dataset.speaker[i], dataset.phone[i]))
    groups = defaultdict(list)
    for i in range(n):
        groups[key(i)].append(i)

    memo = {}

    def frames(i):
        return dataset.frames[dataset.start[i] : dataset.start[i] + dataset.length[i]].astype(np.float64)

    def d(r, c):
        if (r, c) not in memo:
            a, b = frames(r), frames(c)
            if distance == "cosine":
                local = np.arccos(np.clip(a @ b.T, -1, 1)) / np.pi
            else:
                local = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
            memo[(r, c)] = dtw_naive(local.astype(np.float32))
        return memo[(r, c)]

    cells = []  # (speaker, pa, pb, error)
    for gkey, a_items in groups.items():
        ctx = gkey[0] if context_mode == "within" else None
        spk, pa = gkey[-2], gkey[-1]
        for bkey, b_items in groups.items():
            if bkey[:-1] != gkey[:-1] or bkey[-1] == pa:
                continue
            if speaker_mode == "within":
                if len(a_items) < 2:
                    continue
                xs = [[(x, a) for a in a_items if a != x] for x in a_items]
                x_sets = [(a_items, xs)]
            else:
                x_sets = []
                for xkey, x_items in groups.items():
                    same = (xkey[0] == ctx if context_mode == "within" else True)
                    if same and xkey[-1] == pa and xkey[-2] != spk:
                        x_sets.append((x_items, [[(x, a) for a in a_items] for x in x_items]))
            for x_items, pairs in x_sets:
                good = total = 0.0
                for x, xa in zip(x_items, pairs):
                    for (_, a) in xa:
                        # the reference aligns A-A pairs with the earlier item as row
                        dxa = d(min(x, a), max(x, a)) if speaker_mode == "within" else d(x, a)
                        for b in b_items:
                            dxb = d(x, b)
                            good += 1.0 if dxa < dxb else 0.5 if dxa == dxb else 0.0
                            total += 1
                cells.append((spk, pa, bkey[-1], 1 - good / total))
    per_speaker = defaultdict(list)
    for spk, pa, pb, err in cells:
        per_speaker[(spk, pa, pb)].append(err)
    per_pair = defaultdict(list)
    for (spk, pa, pb), errs in per_speaker.items():
        per_pair[(pa, pb)].append(np.mean(errs))
    return 100 * np.mean([np.mean(v) for v in per_pair.values()])


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_vectorised_abx_equals_naive_triplet_loops(tmp_path, distance):
    task = make_synthetic_abx_task(tmp_path, n_items=50, n_speakers=3, n_phones=4, n_words=6, seed=5)
    table = read_item_file(task.item_file)
    from speechsq.eval.abx_data import find_feature_files

    dataset = build_dataset(table, find_feature_files(task.feature_dir), frame_shift=0.01)
    result = compute_abx(task.item_file, task.feature_dir, distance=distance, max_size_group=None, max_x_across=None)
    for key, value in result.scores.items():
        speaker_mode, context_mode = key.split("-")
        assert value == pytest.approx(_naive_abx(dataset, distance, speaker_mode, context_mode), abs=1e-4), key


def test_subsampling_is_seeded(tmp_path):
    task = make_synthetic_abx_task(tmp_path, n_items=300, n_speakers=3, n_phones=4, n_words=5, seed=6)
    a = compute_abx(task.item_file, task.feature_dir, max_size_group=3, max_x_across=1, seed=1)
    b = compute_abx(task.item_file, task.feature_dir, max_size_group=3, max_x_across=1, seed=1)
    c = compute_abx(task.item_file, task.feature_dir, max_size_group=3, max_x_across=1, seed=2)
    assert a.scores == b.scores
    assert a.scores != c.scores


# --------------------------------------------------------------------------- edge cases


def test_frame_slicing_follows_the_reference():
    # frame k centred at k * 10 ms; keep [ceil(100 t0 - .5), floor(100 t1 - .5))
    assert item_frame_range(0.0, 0.05, 100, 100.0, 0.0) == (0, 4)
    assert item_frame_range(0.013, 0.052, 100, 100.0, 0.0) == (1, 4)
    assert item_frame_range(0.5, 2.0, 10, 100.0, 0.0) == (50, 10)  # beyond the file: empty
    assert item_frame_range(0.0, 0.05, 100, 100.0, 0.005) == (0, 4)


def test_edge_cases_are_counted_not_fatal(tmp_path):
    rng = np.random.default_rng(0)
    files = {f"s{s}_{k}": rng.random((6, 3)) + (k % 2) * 3 for s in (1, 2) for k in range(4)}
    files["one_frame"] = rng.random((1, 3))
    items = [f"s{s}_{k} 0.0 0.05 {'ab'[k % 2]} x y s{s}" for s in (1, 2) for k in range(4)]
    items += [
        "missing_file 0.0 0.05 a x y s1",
        "s1_0 0.30 0.40 a x y s1",  # after the end of the file: no frames
        "s1_0 0.02 0.02 b x y s1",  # zero duration
        "one_frame 0.0 0.015 a x y s2",  # a single frame: fine
    ]
    item_file, feat_dir = _write_task(tmp_path, files, items)
    result = compute_abx(item_file, feat_dir, max_size_group=None, max_x_across=None)
    inputs = result.inputs
    assert inputs["missing_files"] == 1 and inputs["items_missing_file"] == 1
    assert inputs["empty_items"] == 2
    assert inputs["single_frame_files"] == 1
    assert inputs["n_items_used"] == 9
    assert all(v is not None and 0 <= v < 100 for v in result.scores.values())


def test_negative_features_under_kl_are_counted_and_no_score_is_invented(tmp_path):
    item_file, feat_dir = _two_phone_task(tmp_path, speaker_b_swapped=False)
    np.save(feat_dir / "s1_0.npy", -np.ones((3, 3)))  # negative "probabilities"
    result = compute_abx(item_file, feat_dir, distance="kl", max_size_group=None, max_x_across=None)
    assert result.inputs["negative_items"] == 1
    assert result.scores["within-within"] == 0.0  # the other items still score normally
    # every item negative: no score at all (None), never a silent 100 %
    for name in list(feat_dir.glob("*.npy")):
        np.save(name, -np.ones((3, 3)))
    result = compute_abx(item_file, feat_dir, distance="kl_symmetric", max_size_group=None, max_x_across=None)
    assert result.inputs["negative_items"] == 12
    assert all(v is None for v in result.scores.values())


def test_unit_sequences_with_edit_distance(tmp_path):
    files = {}
    items = []
    for s in (1, 2):
        for k in range(4):
            units = np.array([1, 1, 2, 2]) if k % 2 == 0 else np.array([5, 6, 6, 7])
            files[f"s{s}_{k}"] = units
            items.append(f"s{s}_{k} 0.0 0.045 {'ab'[k % 2]} x y s{s}")
    item_file, feat_dir = _write_task(tmp_path, files, items)
    result = compute_abx(item_file, feat_dir, distance="edit", dedup_units=True, max_size_group=None, max_x_across=None)
    assert all(v == 0.0 for v in result.scores.values())
    with pytest.raises(ValueError, match="discrete units need one column"):
        np.save(feat_dir / "s1_0.npy", np.zeros((4, 2)))
        compute_abx(item_file, feat_dir, distance="edit")


def test_bad_item_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.item"
    bad.write_text(HEADER + "\nfile 0.0 0.1 a x y\n")
    with pytest.raises(ValueError, match="expected 7 columns"):
        read_item_file(bad)


def test_cli_writes_percent_json_and_table(tmp_path, capsys):
    item_file, feat_dir = _two_phone_task(tmp_path, speaker_b_swapped=True)
    out = tmp_path / "abx.json"
    assert main(["--items", str(item_file), "--features", str(feat_dir), "--mode", "across", "--context", "within",
                 "--no-subsample", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["scores"] == {"across-within": 100.0}
    assert "ABX error rate" in capsys.readouterr().out


# --------------------------------------------------------------------------- the peer


@pytest.mark.parametrize("distance,subsample", [("cosine", False), ("cosine", True), ("kl_symmetric", False)])
def test_agrees_with_zerospeech_libriabx2(tmp_path, distance, subsample):
    zrc = pytest.importorskip("zrc_abx2", exc_type=ImportError)
    task = make_synthetic_abx_task(tmp_path, n_items=160, n_speakers=3, n_phones=6, n_words=10, seed=7,
                                   posteriorgram=distance.startswith("kl"))
    group, x_across = (4, 2) if subsample else (10**9, 10**9)
    ours = compute_abx(task.item_file, task.feature_dir, distance=distance,
                       max_size_group=group if subsample else None, max_x_across=x_across if subsample else None)
    with contextlib.redirect_stdout(io.StringIO()):
        peer = zrc.EvalABX().eval_abx(zrc.EvalArgs(path_data=str(task.feature_dir), path_item_file=str(task.item_file),
                                                   distance_mode=distance, max_size_group=group, max_x_across=x_across))
    assert len(peer) == 4
    for row in peer:
        key = f"{row['abx-s-condition']}-{row['abx-c-condition']}"
        assert ours.scores[key] == pytest.approx(100 * row["score"], abs=0.1), key
        assert ours.scores[key] == pytest.approx(100 * row["score"], abs=1e-3), key  # in fact identical
