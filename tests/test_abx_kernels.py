"""ABX kernels: DTW and edit distance (compiled, torch, naive), the arc cosine polynomial, frame
distances (compiled vs torch), the replay of Python's random.sample, cell bookkeeping."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from abx_peer import require_peer_module
from speechsq.eval.abx_cells import enumerate_cells
from speechsq.eval.abx_data import build_dataset, read_item_file
from speechsq.eval.abx_distance import (
    COSINE,
    EUCLIDEAN,
    KL,
    KL_EPSILON,
    KL_SYMMETRIC,
    angle,
    angle_torch,
    frame_distance_tile,
    frame_distances_torch,
    get_distance,
)
from speechsq.eval.abx_random import next_uint32, sample_indices, state_of
from speechsq.eval.dtw import dtw_batch, dtw_naive, dtw_torch, edit_distance_batch, edit_distance_torch

F32 = np.float32


# --------------------------------------------------------------------------- DTW


def _all_dtw(matrix) -> tuple[float, float, float]:
    d = np.asarray(matrix, np.float32)
    compiled = float(dtw_batch(d[None])[0])
    batched = float(dtw_torch(torch.from_numpy(d[None]), torch.tensor([d.shape[0]]), torch.tensor([d.shape[1]]))[0])
    return compiled, batched, dtw_naive(d)


@pytest.mark.parametrize(
    "matrix, expected",
    [
        ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], 0.0),
        ([[1, 2, 3, 6]], 12 / 4),  # 1 x m: the path crosses every cell
        ([[1], [2], [3], [6]], 12 / 4),
        ([[1, 1], [1, 1]], 2 / 2),  # the diagonal: 2 cells
        # diagonal and upward step tie at (1, 1) (both cost 1): the diagonal wins, path of 2
        # cells (preferring the upward step would give 2 / 3)
        ([[1, 0], [1, 1]], 2 / 2),
        # left and upward step tie at (2, 1) (both 0.5, diagonal 1): the left step wins, then the
        # border: 4 cells, 1.5 / 4 (preferring the upward step would give 1.5 / 3)
        ([[0, 0], [1, 0.5], [-0.5, 1]], 1.5 / 4),
        # a real alignment: the cheap cells are (0,0) (1,0) (2,1) (2,2): 0.25 + ... / 4 cells
        ([[0.25, 9, 9], [0.25, 9, 9], [9, 0.5, 0.5]], 1.5 / 4),
    ],
)
def test_dtw_value_and_tie_rule_on_hand_computed_matrices(matrix, expected):
    assert _all_dtw(matrix) == (expected, expected, expected)


@pytest.mark.parametrize("ties", [False, True])
def test_compiled_and_torch_dtw_equal_the_naive_loop_bit_for_bit_with_padding(ties):
    rng = np.random.default_rng(1)
    for rows, cols in [(1, 1), (1, 5), (4, 1), (3, 7), (6, 6), (9, 4)]:
        dist = (rng.integers(0, 3, (40, rows, cols)) if ties else rng.random((40, rows, cols))).astype(np.float32)
        n = rng.integers(1, rows + 1, 40)
        m = rng.integers(1, cols + 1, 40)
        naive = [dtw_naive(dist[p, : n[p], : m[p]]) for p in range(40)]
        assert dtw_batch(dist, n, m).tolist() == naive
        assert dtw_torch(torch.from_numpy(dist), torch.from_numpy(n), torch.from_numpy(m)).tolist() == naive


def test_dtw_equals_the_reference_compiled_dtw():
    ref = require_peer_module("libri_light_dtw")
    rng = np.random.default_rng(2)
    for rows, cols in [(2, 3), (5, 5), (8, 3), (3, 2)]:
        dist = rng.integers(0, 4, (30, rows, cols)).astype(np.float32)
        expected = ref.dtw_batch(None, None, torch.full((30,), rows), torch.full((1,), cols), dist[:, None], False, False)[:, 0]
        np.testing.assert_array_equal(dtw_batch(dist), expected.numpy())


# --------------------------------------------------------------------------- edit distance


def _levenshtein(a, b) -> int:
    table = np.zeros((len(a) + 1, len(b) + 1), int)
    table[:, 0], table[0, :] = np.arange(len(a) + 1), np.arange(len(b) + 1)
    for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
        table[i, j] = min(table[i - 1, j] + 1, table[i, j - 1] + 1, table[i - 1, j - 1] + (a[i - 1] != b[j - 1]))
    return int(table[-1, -1])


@pytest.mark.parametrize(
    "a, b, edits",
    [([1, 2, 3], [1, 2, 3], 0), ([1, 2, 3], [1, 3], 1), ([1, 2], [1, 2, 3, 4], 2), ([1, 3], [2], 2),
     ([3, 8, 4, 4, 8, 6], [5, 8, 4, 4, 8, 6, 5], 2), ([7], [1, 2, 3, 4], 4)],
)
def test_edit_distance_on_hand_counted_edits(a, b, edits):
    expected = F32(edits) / F32(max(len(a), len(b)))
    assert edit_distance_batch(np.array([a]), np.array([b]))[0] == expected
    got = edit_distance_torch(torch.tensor([a]), torch.tensor([b]), torch.tensor([len(a)]), torch.tensor([len(b)]))
    assert got[0].item() == expected


def test_compiled_and_torch_edit_distance_equal_levenshtein_with_padding():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 3, (60, 6)), rng.integers(0, 3, (60, 8))
    n, m = rng.integers(1, 7, 60), rng.integers(1, 9, 60)
    expected = [F32(_levenshtein(a[p, : n[p]], b[p, : m[p]])) / F32(max(n[p], m[p])) for p in range(60)]
    assert edit_distance_batch(a, b, n, m).tolist() == expected
    assert edit_distance_torch(*map(torch.from_numpy, (a, b, n, m))).tolist() == expected


# --------------------------------------------------------------------------- frame distances


def test_angle_is_exact_at_the_landmarks():
    for c, expected in [(1.0, 0.0), (-1.0, 1.0), (0.0, 0.5), (0.5, 1 / 3), (-0.5, 2 / 3)]:
        assert angle(F32(c)) == F32(expected)
        assert angle_torch(torch.tensor([c], dtype=torch.float32)).item() == F32(expected)


def test_angle_is_the_correctly_rounded_arc_cosine_and_torch_equals_it():
    rng = np.random.default_rng(4)
    c = np.concatenate([rng.uniform(-1, 1, 200_000), 1 - rng.uniform(0, 1e-3, 20_000), -1 + rng.uniform(0, 1e-3, 20_000)])
    c = c.astype(np.float32)
    expected = (np.arccos(c.astype(np.float64)) / np.pi).astype(np.float32)
    compiled = np.array([angle(v) for v in c[:3000]], np.float32)  # scalar calls are slow: a slice
    np.testing.assert_array_equal(compiled, expected[:3000])
    np.testing.assert_array_equal(angle_torch(torch.from_numpy(c)).numpy(), expected)


def _tile(code, a, b):
    def logs(x):  # log(frame + eps), which only the KL distances read
        return np.log(x + KL_EPSILON) if code in (KL, KL_SYMMETRIC) else np.zeros_like(x)

    out = np.empty((len(a), len(b)), np.float32)
    frame_distance_tile(code, a, np.ascontiguousarray(b.T), logs(a), np.ascontiguousarray(logs(b).T), out)
    return out


def test_frame_distances_on_hand_computed_frames():
    a = np.array([[1.0, 0.0], [0.6, 0.8]])
    b = np.array([[0.0, 1.0], [1.0, 0.0]])
    # the dot product is rounded to float32 before the arc cosine, as in the reference
    angle_of = lambda dot: np.arccos(np.float64(F32(dot))) / np.pi  # noqa: E731
    np.testing.assert_array_equal(_tile(COSINE, a, b), np.array([[0.5, 0.0], [angle_of(0.8), angle_of(0.6)]], np.float32))
    euclid = lambda x, y: math.sqrt((x[0] - y[0]) ** 2 + (x[1] - y[1]) ** 2)  # noqa: E731
    np.testing.assert_array_equal(_tile(EUCLIDEAN, a, b), np.array([[euclid(x, y) for y in b] for x in a], np.float32))
    # dot products beyond [-1, 1] (unnormalised frames) are clamped: angle 0 and 1
    np.testing.assert_array_equal(_tile(COSINE, np.array([[1.0, 0.5]]), np.array([[1.0, 0.5], [-1.0, -0.5]])), [[0.0, 1.0]])
    p, q = np.array([[0.25, 0.75]]), np.array([[0.5, 0.5], [0.25, 0.75], [0.0, 1.0]])
    log = lambda v: math.log(v + 1e-6)  # noqa: E731  (the reference's epsilon)
    kl = [sum(p[0, k] * (log(p[0, k]) - log(r[k])) for k in range(2)) for r in q]
    reverse = [sum(r[k] * (log(r[k]) - log(p[0, k])) for k in range(2)) for r in q]
    np.testing.assert_array_equal(_tile(KL, p, q), np.array([kl], np.float32))
    np.testing.assert_array_equal(_tile(KL_SYMMETRIC, p, q), np.array([[(f + r) / 2 for f, r in zip(kl, reverse)]], np.float32))
    # identical frames: exactly zero for every distance (ties between duplicates stay ties)
    for code, frame in [(COSINE, a[1:]), (EUCLIDEAN, a[1:]), (KL, p), (KL_SYMMETRIC, p)]:
        assert _tile(code, frame, frame)[0, 0] == 0.0


@pytest.mark.parametrize("name", ["cosine", "euclidean", "kl", "kl_symmetric"])
def test_compiled_and_torch_frame_distances_agree(name):
    rng = np.random.default_rng(5)
    a, b = rng.random((7, 9)), rng.random((11, 9))
    if name == "cosine":
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
    code = get_distance(name).code
    ours = frame_distances_torch(code, torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0].numpy()
    # float64 sums in another order may round to the neighbouring float32, never further
    np.testing.assert_allclose(_tile(code, a, b), ours, rtol=2**-23, atol=0)


# --------------------------------------------------------------------------- random.sample replay


def test_generator_replays_python_random_bit_for_bit():
    state = state_of(random.Random(3459))
    reference = random.Random(3459)
    assert [int(next_uint32(state)) for _ in range(1500)] == [reference.getrandbits(32) for _ in range(1500)]


def test_sample_replays_python_random_sample_in_both_algorithms():
    state, reference = state_of(random.Random(11)), random.Random(11)
    out = np.empty(80, np.int64)
    rng = np.random.default_rng(6)
    # n <= setsize takes the shrinking pool, n > setsize rejects repeats (k=10: setsize 85)
    cases = [(50, 10), (85, 10), (86, 10), (3000, 10), (7, 7), (1, 1), (2, 0), (500, 80)]
    cases += [(int(n), int(rng.integers(0, min(n, 60) + 1))) for n in rng.integers(1, 400, 2000)]
    for n, k in cases:
        sample_indices(state, n, k, out)
        assert out[:k].tolist() == reference.sample(range(n), k), (n, k)


# --------------------------------------------------------------------------- cells


def test_cell_sizes_alignments_and_comparisons(tmp_path):
    # one context; speaker s1: 3 items of a, 2 of b; speaker s2: 1 of a, 2 of b
    labels = [("a", "s1"), ("a", "s1"), ("a", "s1"), ("b", "s1"), ("b", "s1"), ("a", "s2"), ("b", "s2"), ("b", "s2")]
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    lines += [f"f{k} 0 0.03 {phone} x y {speaker}" for k, (phone, speaker) in enumerate(labels)]
    (tmp_path / "t.item").write_text("\n".join(lines) + "\n")
    table = read_item_file(tmp_path / "t.item")
    dataset = build_dataset(table, {f"f{k}": np.ones((3, 2)) for k in range(8)}, frame_shift=0.01)
    within = enumerate_cells(dataset, "within", "within", None, None, 0)
    # s1 (a|b): X = A (3 items): 3 A-A pairs + 3*2 X-B; s1 (b|a): 1 + 2*3; s2 (b|a): 1 + 2*1;
    # s2 (a|b) has a single A: no cell
    assert within.n_alignments().tolist() == [3 + 6, 1 + 6, 1 + 2]
    assert within.n_comparisons().tolist() == [3 * 2 * 2, 2 * 1 * 3, 2 * 1 * 1]
    across = enumerate_cells(dataset, "across", "within", None, None, 0)
    # (s1 a|b, X = s2's a: 1 item), (s1 b|a, X = s2's b: 2), (s2 a|b, X = s1's a: 3), (s2 b|a, X = s1's b: 2)
    assert across.n_comparisons().tolist() == [1 * 3 * 2, 2 * 2 * 3, 3 * 1 * 2, 2 * 2 * 1]
    assert across.n_alignments().tolist() == [1 * (3 + 2), 2 * (2 + 3), 3 * (1 + 2), 2 * (2 + 1)]
    # chunks end where the running count (5, 15, 24, 30) first passes a multiple of 10
    assert [chunk.tolist() for chunk in across.chunks(alignments_per_chunk=10)] == [[0], [1], [2, 3]]


def _reference_cells(dataset, speaker_mode, context_mode, max_size_group, max_x_across, seed):
    """The cells as the reference's iterators build them, in plain Python with random.sample:
    items sorted by (context,) speaker, phone; within speaker B is drawn before A, across A,
    B, then X, after drawing at most max_x_across X speakers per A run."""
    rng = random.Random(seed)
    keys = [dataset.speaker, dataset.phone] if context_mode == "any" else [dataset.context, dataset.speaker, dataset.phone]
    order = sorted(range(len(dataset)), key=lambda i: tuple(int(k[i]) for k in keys) + (i,))
    groups: dict[tuple, dict[int, list[int]]] = {}
    for position, i in enumerate(order):
        outer = tuple(int(k[i]) for k in keys[:-1])
        groups.setdefault(outer, {}).setdefault(int(dataset.phone[i]), []).append(position)

    def take(run):
        if max_size_group is not None and len(run) > max_size_group:
            return rng.sample(run, k=max_size_group)
        return list(run)

    cells = []
    context_of = (lambda outer: outer[0]) if context_mode == "within" else (lambda outer: -1)
    if speaker_mode == "within":
        for outer, runs in groups.items():
            for pa, run_a in runs.items():
                if len(runs) == 1 or len(run_a) == 1:
                    continue
                for pb, run_b in runs.items():
                    if pb != pa:
                        b, a = take(run_b), take(run_a)
                        cells.append((a, b, a, outer[-1], pa, pb, context_of(outer), outer[-1]))
        return order, cells
    by_phone: dict[tuple, list[tuple[int, list[int]]]] = {}
    for outer, runs in groups.items():
        for phone, run in runs.items():
            by_phone.setdefault((context_of(outer), phone), []).append((outer[-1], run))
    for outer, runs in groups.items():
        if len(runs) == 1:
            continue
        for pa, run_a in runs.items():
            others = [(s, run) for s, run in by_phone[(context_of(outer), pa)] if s != outer[-1]]
            if max_x_across is not None and len(others) > max_x_across:
                others = rng.sample(others, k=max_x_across)
            for speaker_x, run_x in others:
                for pb, run_b in runs.items():
                    if pb != pa:
                        a, b, x = take(run_a), take(run_b), take(run_x)
                        cells.append((a, b, x, outer[-1], pa, pb, context_of(outer), speaker_x))
    return order, cells


@pytest.mark.parametrize("limits", [(None, None), (3, 1), (2, None), (None, 2), (10, 5)])
def test_cells_and_draws_equal_a_plain_python_enumeration(tmp_path, limits):
    from speechsq.eval.abx_synthetic import make_synthetic_abx_task
    from speechsq.eval.abx_data import find_feature_files

    task = make_synthetic_abx_task(tmp_path, n_items=300, n_speakers=4, n_phones=4, n_words=5, seed=12)
    dataset = build_dataset(read_item_file(task.item_file), find_feature_files(task.feature_dir), frame_shift=0.01)
    for speaker_mode, context_mode in itertools.product(("within", "across"), ("within", "any")):
        cells = enumerate_cells(dataset, speaker_mode, context_mode, *limits, seed=5)
        order, expected = _reference_cells(dataset, speaker_mode, context_mode, *limits, seed=5)
        got = [
            (cells.a[cells.a_ptr[k] : cells.a_ptr[k + 1]].tolist(), cells.b[cells.b_ptr[k] : cells.b_ptr[k + 1]].tolist(),
             cells.x[cells.x_ptr[k] : cells.x_ptr[k + 1]].tolist(), cells.speaker[k], cells.phone_a[k], cells.phone_b[k],
             cells.context[k], cells.speaker_x[k])
            for k in range(len(cells))
        ]
        as_items = [([order[p] for p in a], [order[p] for p in b], [order[p] for p in x], *ids) for a, b, x, *ids in expected]
        assert got == as_items, (speaker_mode, context_mode)
        assert len(got) > 0
