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
