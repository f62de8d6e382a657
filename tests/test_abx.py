"""ABX scores: hand-computed tasks (exact error rates, ties, aggregation order), both backends,
a naive triplet-by-triplet ABX, seeded subsampling, the CLI, and agreement with
zerospeech-libriabx2 (the reference)."""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict

import numba
import numpy as np
import pytest

from abx_peer import require_peer_module
from speechsq.eval.abx import compute_abx, main
from speechsq.eval.abx_data import build_dataset, find_feature_files, read_item_file
from speechsq.eval.abx_synthetic import make_synthetic_abx_task
from speechsq.eval.dtw import dtw_naive

HEADER = "#file onset offset #phone prev-phone next-phone speaker"
BACKENDS = ["numba", "torch"]
ALL = ("within-within", "across-within", "within-any", "across-any")


def _write_task(tmp_path, files: dict[str, np.ndarray], items: list[str], ext=".npy"):
    feat_dir = tmp_path / "feats"
    feat_dir.mkdir(parents=True, exist_ok=True)
    for name, array in files.items():
        if ext == ".npy":
            np.save(feat_dir / f"{name}.npy", array)
        else:
            np.savetxt(feat_dir / f"{name}.txt", array)
    item_file = tmp_path / "task.item"
    item_file.write_text("\n".join([HEADER] + items) + "\n")
    return item_file, feat_dir


def _scalar_task(tmp_path, values: list[tuple[str, str, str, float]]):
    """One item per (speaker, phone, context, value): a file holding one 1-D frame ``value``."""
    files, items = {}, []
    for k, (speaker, phone, context, value) in enumerate(values):
        name = f"{speaker}_{k}"
        files[name] = np.array([[value]], np.float32)
        prev, nxt = context.split("_")
        items.append(f"{name} 0.0 0.015 {phone} {prev} {nxt} {speaker}")  # exactly frame 0
    return _write_task(tmp_path, files, items)


def _euclidean_abx(item_file, feat_dir, **kwargs):
    # 1-D frames, not normalised: d(x, y) = |x - y|, DTW of one frame = that distance
    return compute_abx(item_file, feat_dir, distance="euclidean", normalize=False, max_size_group=None,
                       max_x_across=None, **kwargs)


# s1: a = {0, 2}, b = {1, 4}; s2: a = {0, 0.5}, b = {10, 11}; one context
HAND = [("s1", "a", "x_y", 0.0), ("s1", "a", "x_y", 2.0), ("s1", "b", "x_y", 1.0), ("s1", "b", "x_y", 4.0),
        ("s2", "a", "x_y", 0.0), ("s2", "a", "x_y", 0.5), ("s2", "b", "x_y", 10.0), ("s2", "b", "x_y", 11.0)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_error_rates_with_a_tie(tmp_path, backend):
    """Within speaker, cell (s1, a|b): X=0: d(X,A')=2 vs d(X,B)=1, 4 -> 1 right; X=2: 2 vs 1, 2 ->
    0 + 1/2 (tie) -> 1.5 of 4 right, error 0.625. (s1, b|a): X=1: 3 vs 1, 1 -> 0; X=4: 3 vs 4, 2
    -> 1: error 0.75. s2 is separable: errors 0. Per pair over speakers: (0.625 + 0) / 2 and
    (0.75 + 0) / 2; their mean: 0.34375.
    Across speaker, cell (A = s1 a, B = s1 b, X = s2 a): X=0: (0, 2) vs (1, 4) -> 3 of 4;
    X=0.5: (0.5, 1.5) vs (0.5, 3.5) -> 1/2 + 1 + 1 -> 5.5 of 8, error 0.3125; (s1 b|a, X = s2 b):
    6 of 8, error 0.25; (s2 a|b, X = s1 a): 8 of 8; (s2 b|a, X = s1 b): 0 of 8, error 1.
    Per pair: (0.3125 + 0) / 2, (0.25 + 1) / 2; mean 0.390625."""
    result = _euclidean_abx(*_scalar_task(tmp_path, HAND), backend=backend)
    assert result.scores == {"within-within": 34.375, "across-within": 39.0625, "within-any": 34.375, "across-any": 39.0625}
    assert result.n_cells == {"within-within": 4, "across-within": 4, "within-any": 4, "across-any": 4}
    assert result.settings["n_alignments"] == 2 * (4 * (1 + 2 * 2)) + 2 * (4 * 2 * 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_aggregation_averages_contexts_then_speakers_then_phone_pairs(tmp_path, backend):
    """Within speaker and context: s1 in context x_y and u_v, s2 only in x_y.
    x_y (both speakers): a = {0, 0.5}, b = {10, 11}: errors 0.
    u_v (s1): a = {0, 10}, b = {1, 9}: (a|b) X=0: A'=10 farther than both B; X=10 likewise: error 1;
    (b|a) X=1: d(X,A')=8 vs 1, 9 -> 1 right; X=9: 8 vs 9, 1 -> 1 right: error 0.5.
    (a|b): s1 = mean over contexts (0 + 1) / 2, then over speakers (0.5 + 0) / 2 = 0.25;
    (b|a): ((0 + 0.5) / 2 + 0) / 2 = 0.125; mean over pairs 0.1875.
    A flat mean over the 6 cells would give 0.25, speakers before contexts 0.375."""
    separable = [("a", 0.0), ("a", 0.5), ("b", 10.0), ("b", 11.0)]
    confusable = [("a", 0.0), ("a", 10.0), ("b", 1.0), ("b", 9.0)]
    values = [("s1", p, "x_y", v) for p, v in separable] + [("s1", p, "u_v", v) for p, v in confusable]
    values += [("s2", p, "x_y", v) for p, v in separable]
    result = _euclidean_abx(*_scalar_task(tmp_path, values), speaker_modes=("within",), context_modes=("within",),
                            backend=backend)
    assert result.scores == {"within-within": 18.75}
    assert result.n_cells == {"within-within": 6}


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_features_tie_at_exactly_fifty_percent(tmp_path, backend):
    files = {f"s{s}_{k}": np.ones((4, 2)) for s in (1, 2) for k in range(4)}
    items = [f"s{s}_{k} 0.0 0.04 {'ab'[k % 2]} x y s{s}" for s in (1, 2) for k in range(4)]
    result = compute_abx(*_write_task(tmp_path, files, items), max_size_group=None, max_x_across=None, backend=backend)
    assert result.scores == dict.fromkeys(ALL, 50.0)


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_separable_phones_give_zero_and_swapped_speakers_full_error_across(tmp_path, backend):
    result = compute_abx(*_two_phone_task(tmp_path / "same", False), max_size_group=None, max_x_across=None, backend=backend)
    assert result.scores == dict.fromkeys(ALL, 0.0)
    assert result.inputs["n_items_used"] == 12
    swapped = compute_abx(*_two_phone_task(tmp_path / "swapped", True), max_size_group=None, max_x_across=None, backend=backend)
    assert swapped.scores == {"within-within": 0.0, "across-within": 100.0, "within-any": 0.0, "across-any": 100.0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_unit_sequences_with_the_edit_distance(tmp_path, backend):
    """One speaker. a1 = 1 2, a2 = 1 3, b1 = 1 2 3 4, b2 = 2. Normalised edit distances:
    a1-a2 1/2, a1-b1 2/4, a1-b2 1/2, a2-b1 2/4, a2-b2 2/2, b1-b2 3/4.
    (a|b): X=a1: 1/2 vs 1/2, 1/2 -> two ties; X=a2: 1/2 vs 1/2, 1 -> tie + right: 2.5 of 4, error 0.375.
    (b|a): X=b1: 3/4 vs 1/2, 1/2 -> 0; X=b2: 3/4 vs 1/2, 1 -> 1: error 0.75. Mean 0.5625.
    The files repeat units (1 1 2 ...); --dedup-units collapses the runs first."""
    units = {"a1": [1, 1, 2], "a2": [1, 3, 3], "b1": [1, 2, 2, 3, 4], "b2": [2, 2]}
    files = {name: np.array(seq) for name, seq in units.items()}
    items = [f"{name} 0 {len(seq) + 0.5} {name[0]} x y s1" for name, seq in units.items()]  # 1 s frames: all of them
    item_file, feat_dir = _write_task(tmp_path, files, items)
    result = compute_abx(item_file, feat_dir, frame_shift=1.0, distance="edit", dedup_units=True,
                         speaker_modes=("within",), max_size_group=None, backend=backend)
    assert result.scores == {"within-within": 56.25, "within-any": 56.25}


@pytest.mark.parametrize("backend", BACKENDS)
def test_within_speaker_aligns_each_pair_once_with_the_earlier_item_as_row(tmp_path, backend):
    """DTW is not symmetric under its tie rule: for A1 = 0 2 0 and A2 = 1 1 0 2 (1-D frames,
    |x - y|), dtw(A1 rows, A2 columns) = 1.0 but dtw(A2 rows, A1 columns) = 0.8. The reference
    aligns the pair once, A1 (earlier in the file) as rows, for X = A1 and X = A2 alike.
    B = 0.2: d(A1, B) = 2.2 / 3, d(A2, B) = 3.6 / 4 = 0.9. X = A1: 1.0 vs 0.73 wrong; X = A2:
    1.0 vs 0.9 wrong (0.8 would have been right): error 100 %, not 50 %."""
    frames = np.array([[0], [2], [0], [1], [1], [0], [2], [0.2]], np.float32)
    items = ["f 0.0 0.035 a x y s1", "f 0.03 0.075 a x y s1", "f 0.07 0.085 b x y s1"]
    result = _euclidean_abx(*_write_task(tmp_path, {"f": frames}, items), speaker_modes=("within",),
                            context_modes=("within",), backend=backend)
    assert result.scores == {"within-within": 100.0}


def test_tiles_chunks_and_batches_do_not_change_the_numbers(tmp_path, monkeypatch):
    from speechsq.eval import abx_numba, abx_torch

    task = make_synthetic_abx_task(tmp_path, n_items=48, n_speakers=2, n_phones=3, n_words=4, seed=9)
    reference = {b: compute_abx(task.item_file, task.feature_dir, max_size_group=None, max_x_across=None, backend=b)
                 for b in BACKENDS}
    monkeypatch.setattr(abx_numba, "TILE_ENTRIES", 1)  # one X item per tile
    monkeypatch.setattr(abx_numba, "CHUNK_ALIGNMENTS", 1)  # one cell per kernel call
    monkeypatch.setattr(abx_torch, "CHUNK_ALIGNMENTS", 1)
    monkeypatch.setattr(abx_torch, "BATCH_ENTRIES", 1)  # one pair per batch
    assert reference["numba"].settings["n_alignments"] > 300  # many tiles, chunks and batches
    for backend in BACKENDS:
        small = compute_abx(task.item_file, task.feature_dir, max_size_group=None, max_x_across=None, backend=backend)
        assert small.scores == reference[backend].scores, backend


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
            if distance == "cosine":  # the float64 dot product rounded to float32, then its angle
                dots = np.clip((a @ b.T).astype(np.float32).astype(np.float64), -1, 1)
                local = np.arccos(dots) / np.pi
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
                x_sets = [(a_items, [[a for a in a_items if a != x] for x in a_items])]
            else:
                x_sets = []
                for xkey, x_items in groups.items():
                    same = (xkey[0] == ctx if context_mode == "within" else True)
                    if same and xkey[-1] == pa and xkey[-2] != spk:
                        x_sets.append((x_items, [a_items for _ in x_items]))
            for x_items, partners in x_sets:
                good = total = 0.0
                for x, others in zip(x_items, partners):
                    for a in others:
                        # within speaker the pair is aligned once, the earlier item as row
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
def test_abx_equals_naive_triplet_loops(tmp_path, distance):
    task = make_synthetic_abx_task(tmp_path, n_items=50, n_speakers=3, n_phones=4, n_words=6, seed=5)
    dataset = build_dataset(read_item_file(task.item_file), find_feature_files(task.feature_dir), frame_shift=0.01)
    result = compute_abx(task.item_file, task.feature_dir, distance=distance, max_size_group=None, max_x_across=None)
    for key, value in result.scores.items():
        speaker_mode, context_mode = key.split("-")
        assert value == pytest.approx(_naive_abx(dataset, distance, speaker_mode, context_mode), abs=1e-9), key


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "kl_symmetric"])
def test_torch_backend_equals_the_compiled_backend_with_subsampling(tmp_path, distance):
    task = make_synthetic_abx_task(tmp_path, n_items=240, n_speakers=3, n_phones=5, n_words=8, seed=8,
                                   posteriorgram=distance.startswith("kl"))
    numba_result = compute_abx(task.item_file, task.feature_dir, distance=distance, max_size_group=4, max_x_across=1)
    torch_result = compute_abx(task.item_file, task.feature_dir, distance=distance, max_size_group=4, max_x_across=1,
                               backend="torch")
    assert torch_result.n_cells == numba_result.n_cells
    for key in ALL:  # frame distances may differ in the last float32 bit (float64 sums in another order)
        assert torch_result.scores[key] == pytest.approx(numba_result.scores[key], abs=1e-6), key
    assert (torch_result.settings["backend"], numba_result.settings["backend"]) == ("torch", "numba")


def test_subsampling_is_seeded_and_changes_with_the_seed(tmp_path):
    task = make_synthetic_abx_task(tmp_path, n_items=300, n_speakers=3, n_phones=4, n_words=5, seed=6)
    a = compute_abx(task.item_file, task.feature_dir, max_size_group=3, max_x_across=1, seed=1)
    b = compute_abx(task.item_file, task.feature_dir, max_size_group=3, max_x_across=1, seed=1)
    c = compute_abx(task.item_file, task.feature_dir, max_size_group=3, max_x_across=1, seed=2)
    assert a.scores == b.scores
    assert all(a.scores[key] != c.scores[key] for key in ALL)
    full = compute_abx(task.item_file, task.feature_dir, max_size_group=None, max_x_across=None)
    assert full.settings["n_alignments"] > a.settings["n_alignments"]


def test_txt_features_give_the_npy_scores(tmp_path):
    task = make_synthetic_abx_task(tmp_path / "npy", n_items=120, n_speakers=2, seed=4)
    task_txt = make_synthetic_abx_task(tmp_path / "txt", n_items=120, n_speakers=2, seed=4, extension=".txt")
    npy = compute_abx(task.item_file, task.feature_dir, max_size_group=None, max_x_across=None)
    # the .txt files hold 6 decimals: the same frames up to 5e-7, so the same comparisons here
    txt = compute_abx(task_txt.item_file, task_txt.feature_dir, extension=".txt", max_size_group=None, max_x_across=None)
    assert txt.scores == pytest.approx(npy.scores, abs=1e-9)


# --------------------------------------------------------------------------- CLI


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    item_file, feat_dir = _two_phone_task(tmp_path, speaker_b_swapped=True)
    out = tmp_path / "out" / "abx.json"
    assert main(["--items", str(item_file), "--features", str(feat_dir), "--mode", "across", "--context", "within",
                 "--no-subsample", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["scores"] == {"across-within": 100.0}
    assert data["n_cells"] == {"across-within": 4}
    assert data["inputs"]["n_items_used"] == 12 and data["inputs"]["completion"] is None
    assert (data["settings"]["backend"], data["settings"]["device"]) == ("numba", "cpu")
    assert numba.get_num_threads() == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["ABX error rate (%)", "speaker  context     error     cells", "across   within     100.00         4"]


def test_default_subsampling_is_the_references(tmp_path):
    """zerospeech-libriabx2's defaults: groups above 10 items subsampled, 5 X speakers, seed 3459,
    10 ms frames; the same in the API and on the command line."""
    item_file, feat_dir = _two_phone_task(tmp_path, speaker_b_swapped=False)
    expected = {"max_size_group": 10, "max_x_across": 5, "seed": 3459, "frame_shift": 0.01}
    settings = compute_abx(item_file, feat_dir, speaker_modes=("within",), context_modes=("within",)).settings
    assert {key: settings[key] for key in expected} == expected
    out = tmp_path / "abx.json"
    assert main(["--items", str(item_file), "--features", str(feat_dir), "--mode", "within", "--context", "within",
                 "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert {key: settings[key] for key in expected} == expected


def test_progress_bar_is_shown_on_request_and_never_with_progress_false(tmp_path, capsys):
    item_file, feat_dir = _two_phone_task(tmp_path, speaker_b_swapped=False)
    compute_abx(item_file, feat_dir, speaker_modes=("within",), context_modes=("within",), progress=True)
    assert "ABX within-within" in capsys.readouterr().err
    compute_abx(item_file, feat_dir, speaker_modes=("within",), context_modes=("within",), progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize(
    "distance, subsample",
    [("cosine", False), ("cosine", True), ("euclidean", False), ("kl", False), ("kl_symmetric", True)],
)
def test_agrees_with_zerospeech_libriabx2(tmp_path, distance, subsample):
    zrc = require_peer_module("zrc_abx2")
    task = make_synthetic_abx_task(tmp_path, n_items=160, n_speakers=3, n_phones=6, n_words=10, seed=7,
                                   posteriorgram=distance.startswith("kl"))
    group, x_across = (4, 2) if subsample else (10**9, 10**9)
    ours = compute_abx(task.item_file, task.feature_dir, distance=distance,
                       max_size_group=group if subsample else None, max_x_across=x_across if subsample else None)
    with contextlib.redirect_stdout(io.StringIO()):
        peer = zrc.EvalABX().eval_abx(zrc.EvalArgs(path_data=str(task.feature_dir), path_item_file=str(task.item_file),
                                                   distance_mode=distance, max_size_group=group, max_x_across=x_across))
    assert sorted(f"{row['abx-s-condition']}-{row['abx-c-condition']}" for row in peer) == sorted(ALL)
    for row in peer:
        key = f"{row['abx-s-condition']}-{row['abx-c-condition']}"
        # the reference sums and averages in float32: its numbers carry ~1e-6 points of rounding
        assert ours.scores[key] == pytest.approx(100 * row["score"], abs=1e-4), key


# --------------------------------------------------------------------------- devices


def test_device_choice_and_backend_per_device(monkeypatch, tmp_path):
    import torch

    from speechsq.errors import SpeechsqError
    from speechsq.eval.abx import default_backend, resolve_device

    assert (default_backend("cpu"), default_backend("cuda"), default_backend("cuda:1")) == ("numba", "torch", "torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(SpeechsqError, match="--device cuda: CUDA is not available on this machine"):
        resolve_device("cuda")
    with pytest.raises(SpeechsqError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (resolve_device("auto"), resolve_device("cuda:1")) == ("cuda", "cuda:1")
    item_file, feat_dir = _two_phone_task(tmp_path, speaker_b_swapped=False)
    with pytest.raises(SpeechsqError, match="the numba ABX backend runs on the CPU only, not 'cuda'"):
        compute_abx(item_file, feat_dir, device="cuda", backend="numba")


def test_synthetic_units_are_integer_indices_of_the_codebook(tmp_path):
    task = make_synthetic_abx_task(tmp_path, n_items=40, n_speakers=2, units=8, frame_shift=0.02, phone_frames=(2, 6))
    arrays = [np.load(path) for path in sorted(task.feature_dir.glob("*.npy"))]
    assert all(a.dtype == np.int64 and a.ndim == 1 for a in arrays)
    assert set(np.concatenate(arrays).tolist()) <= set(range(8))
    assert len(read_item_file(task.item_file)) == task.n_items == 40
    result = compute_abx(task.item_file, task.feature_dir, frame_shift=0.02, distance="edit")
    assert result.inputs["n_items_used"] == 40 and result.inputs["empty_items"] == 0
