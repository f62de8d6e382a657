"""Loading checks of the training batch source: NaN/Inf and stale lengths are found at start,
naming the utterance, not when a bad segment happens to be drawn."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import pytest

from speechsq.data.speech import SpeechDataError, SpeechSegmentSource


def feats_dir(root: Path, mats: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True)
    with open(root / "feats.ark", "wb") as f:
        kaldiio.save_ark(f, mats, scp=str(root / "feats.scp"))
    (root / "utt2num_frames").write_text("".join(f"{u} {len(m)}\n" for u, m in sorted(mats.items())))
    (root / "utt2spk").write_text("".join(f"{u} {u[:2]}\n" for u in sorted(mats)))
    return root


def clean(n: int, frames: int = 40, n_mels: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"s{k % 2}_{k}": rng.random((frames, n_mels)).astype(np.float32) for k in range(n)}


@pytest.mark.parametrize("preload", [False, True])
def test_nan_in_any_utterance_fails_at_start_naming_it(tmp_path, preload):
    mats = clean(6)
    mats["s1_3"][37, 2] = np.nan  # a frame few random segments would ever cover
    mats["s1_3"][39, 0] = -np.inf
    root = feats_dir(tmp_path / "f", mats)
    with pytest.raises(SpeechDataError, match=r"utterance 's1_3' in .*f/feats.scp has 2 NaN/Inf values \(first at frame 37\)"):
        SpeechSegmentSource(root, batch_size=2, n_mels=4, preload=preload)


def test_clean_features_load_and_preload_keeps_them(tmp_path):
    mats = clean(4)
    root = feats_dir(tmp_path / "f", mats)
    source = SpeechSegmentSource(root, batch_size=2, n_mels=4, preload=True)
    assert sorted(source._cache) == sorted(mats)
    for utt, matrix in source._cache.items():
        np.testing.assert_array_equal(matrix, mats[utt])
    assert SpeechSegmentSource(root, batch_size=2, n_mels=4)._cache is None


def test_stale_utt2num_frames_is_an_error(tmp_path):
    root = feats_dir(tmp_path / "f", clean(4))
    lines = (root / "utt2num_frames").read_text().splitlines()
    lines[1] = lines[1].split()[0] + " 38"
    (root / "utt2num_frames").write_text("\n".join(lines) + "\n")
    with pytest.raises(SpeechDataError, match=r"utterance 's0_2': 40 frames in .*feats.scp but 38 in utt2num_frames"):
        SpeechSegmentSource(root, batch_size=2, n_mels=4)


def test_every_offset_of_every_usable_utterance_is_drawn(tmp_path):
    """A 34-frame utterance is one whole segment (offset 0 only) and is used, a 33-frame one is
    skipped; a 36-frame one gives offsets 0, 1 and 2 (the last one included). Each pass visits
    every utterance once, in a shuffled order that changes from pass to pass."""
    rng = np.random.default_rng(1)
    lengths = {"s0_a": 33, "s0_b": 34, "s1_c": 36, "s1_d": 40, "s1_e": 40, "s1_f": 40}
    mats = {u: rng.random((n, 4)).astype(np.float32) for u, n in lengths.items()}
    source = SpeechSegmentSource(feats_dir(tmp_path / "f", mats), batch_size=1, n_mels=4, seed=0)
    assert source.utterances == ["s0_b", "s1_c", "s1_d", "s1_e", "s1_f"]
    offsets = {u: set() for u in source.utterances}
    orders = []
    for _ in range(60):  # 60 passes of 5 utterances
        orders.append([])
        for _ in range(5):
            seg = source.next_batch()["feats"][0].numpy().T  # (34, 4)
            hits = [(u, s) for u, m in mats.items() for s in range(len(m) - 33) if np.array_equal(m[s : s + 34], seg)]
            assert len(hits) == 1
            offsets[hits[0][0]].add(hits[0][1])
            orders[-1].append(hits[0][0])
    assert offsets["s0_b"] == {0} and offsets["s1_c"] == {0, 1, 2}
    assert offsets["s1_d"] == set(range(7))  # 40 - 34 + 1 offsets in 60 draws (a given seed: deterministic)
    assert all(sorted(order) == source.utterances for order in orders)
    assert len({tuple(order) for order in orders}) > 1 and orders[0] != source.utterances


def test_speakers_come_from_the_data_dir_before_the_feature_dir(tmp_path):
    """data_dir's utt2spk wins over a utt2spk next to feats.scp (which is only the fallback)."""
    root = feats_dir(tmp_path / "f", clean(4))  # its own utt2spk says s0 / s1
    data = tmp_path / "data"
    data.mkdir()
    (data / "utt2spk").write_text("s0_0 zed\ns0_2 alice\ns1_1 bob\ns1_3 alice\n")
    source = SpeechSegmentSource(root, batch_size=2, n_mels=4, data_dir=data)
    # ids index the sorted speakers, not their order of appearance
    assert source.speakers == ["alice", "bob", "zed"] and source.speaker_of.tolist() == [2, 0, 1, 0]
    assert SpeechSegmentSource(root, batch_size=2, n_mels=4).speakers == ["s0", "s1"]


def test_each_process_draws_its_own_order_and_offsets(tmp_path):
    """Same seed, two processes: the shards differ, and so do the random draws (the order of
    visits and the offsets), not the same sequence replayed on other utterances."""
    mats = {f"s{k % 2}_{k}": np.random.default_rng(k).random((60, 4)).astype(np.float32) for k in range(16)}
    root = feats_dir(tmp_path / "f", mats)
    draws = []
    for rank in (0, 1):
        source = SpeechSegmentSource(root, batch_size=16, n_mels=4, rank=rank, world_size=2, seed=3)
        segs = source.next_batch()["feats"].numpy()
        picks = []
        for seg in segs:
            (hit,) = [(source.utterances.index(u), s) for u in source.utterances for s in range(27)
                      if np.array_equal(mats[u][s : s + 34].T, seg)]
            picks.append(hit)
        assert sorted(i for i, _ in picks) == list(range(8))  # one pass over the shard
        draws.append(picks)
    assert draws[0] != draws[1]
