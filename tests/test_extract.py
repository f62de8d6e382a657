"""Unit extraction: run-length encoding, the files written, the ZeroSpeech tree, padding
invariance of batched extraction, and a tiny real checkpoint through the CLI and the API."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from speechsq.eval.extract import UnitExtractor, deduplicate, encode_batches, extract, main


class FakeModel:
    """Codes = argmax over the first 3 mel channels of each pair of frames (x2 downsampling)."""

    n_mels = 5

    class quantizer:
        num_codes = 3

    def encode(self, feats, lengths):
        b, _, t = feats.shape
        t2 = (t + 1) // 2
        pooled = torch.nn.functional.avg_pool1d(torch.nn.functional.pad(feats, (0, 2 * t2 - t)), 2)  # (B, 5, T')
        z_e = pooled.transpose(1, 2)
        indices = z_e[..., :3].argmax(-1)
        latent = (lengths + 1) // 2
        mask = torch.arange(t2)[None] < latent[:, None]
        indices = torch.where(mask, indices, torch.full_like(indices, -1))
        z_q = torch.nn.functional.one_hot(indices.clamp_min(0), 3).float() * mask[..., None]
        return {"z_e": z_e, "z_q": z_q, "indices": indices, "lengths": latent}


def _feats(rng, lengths):
    return {f"utt{i}": rng.random((n, 5)).astype(np.float32) for i, n in enumerate(lengths)}


def test_deduplicate_round_trip():
    units, durations = deduplicate(np.array([3, 3, 5, 3, 3, 3]))
    assert units.tolist() == [3, 5, 3] and durations.tolist() == [2, 1, 3]
    assert np.repeat(units, durations).tolist() == [3, 3, 5, 3, 3, 3]
    empty_units, empty_durations = deduplicate(np.array([], dtype=int))
    assert len(empty_units) == 0 and len(empty_durations) == 0


def test_batched_extraction_equals_one_by_one():
    rng = np.random.default_rng(0)
    feats = _feats(rng, [7, 12, 3, 9, 1])
    batched = {e.utt: e for e in encode_batches(FakeModel(), feats, batch_size=3, progress=False)}
    for utt, matrix in feats.items():
        single = next(encode_batches(FakeModel(), {utt: matrix}, batch_size=1, progress=False))
        np.testing.assert_array_equal(batched[utt].indices, single.indices)
        np.testing.assert_allclose(batched[utt].z_e, single.z_e)
        assert len(single.indices) == (matrix.shape[0] + 1) // 2


def test_extract_writes_units_and_zerospeech_tree(tmp_path):
    rng = np.random.default_rng(1)
    feats = _feats(rng, [8, 5, 11])
    info = extract(FakeModel(), feats, tmp_path, frame_shift=0.01, batch_size=2, zerospeech=True, progress=False)
    assert info["n_utterances"] == 3 and info["frame_shift"] == pytest.approx(0.02)
    units = dict(line.split(maxsplit=1) for line in (tmp_path / "units.txt").read_text().splitlines())
    durations = dict(line.split(maxsplit=1) for line in (tmp_path / "durations.txt").read_text().splitlines())
    for utt in feats:
        dense = np.load(tmp_path / "indices" / f"{utt}.npy")
        u = np.array(units[utt].split(), int)
        d = np.array(durations[utt].split(), int)
        assert d.sum() == len(dense) and np.repeat(u, d).tolist() == dense.tolist()
        assert np.load(tmp_path / "z_q" / f"{utt}.npy").shape == (len(dense), 3)
        assert np.load(tmp_path / "z_e" / f"{utt}.npy").shape == (len(dense), 5)
    widths = set()
    for sub in ("test", "auxiliary_embedding1"):
        files = sorted((tmp_path / "zerospeech" / sub).glob("*.txt"))
        assert len(files) == 3
        for f in files:
            for line in f.read_text().splitlines():
                assert re.fullmatch(r"\S+( \S+)*", line), f"not single-space separated: {line!r}"
                widths.add((sub, len(line.split(" "))))
            rows = np.loadtxt(f, ndmin=2)
            assert rows.shape[0] == len(np.load(tmp_path / "indices" / f"{f.stem}.npy"))
    assert widths == {("test", 3), ("auxiliary_embedding1", 5)}  # same width in every file
    meta = (tmp_path / "zerospeech" / "metadata.yaml").read_text()
    for key in ("author:", "affiliation:", "open_source:", "train_set:", "gpu_budget:", "parameters:"):
        assert key in meta


def test_zerospeech_onehot_and_bad_options(tmp_path):
    feats = _feats(np.random.default_rng(2), [6])
    extract(FakeModel(), feats, tmp_path, frame_shift=0.01, zerospeech=True, embedding="onehot", progress=False)
    rows = np.loadtxt(tmp_path / "zerospeech" / "test" / "utt0.txt", ndmin=2)
    assert set(rows.sum(1).tolist()) == {1.0}
    with pytest.raises(ValueError, match="unknown ZeroSpeech embedding"):
        extract(FakeModel(), feats, tmp_path, frame_shift=0.01, embedding="bogus", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        list(encode_batches(FakeModel(), feats, batch_size=0))


# --------------------------------------------------------------------------- tiny real model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from omegaconf import OmegaConf

    from speechsq.models import build_model
    from speechsq.training import compose_config

    cfg = compose_config([
        "experiment=mini", "quantizer=vq_ema", "model.n_speakers=2", "model.speakers=[s1,s2]",
        "model.encoder_channels=16", "quantizer.num_codes=8", "quantizer.code_dim=4", "data.feats_dir=unused",
        "preprocessing.n_mels=20",
    ])
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.save({"model": model.state_dict(), "step": 0, "config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


def test_tiny_real_model_through_the_cli(tmp_path, tiny_checkpoint):
    from speechsq.features.store import ArkWriter

    rng = np.random.default_rng(3)
    data_dir, feat_dir = tmp_path / "data", tmp_path / "feats"
    data_dir.mkdir()
    writer = ArkWriter(feat_dir)
    utts = {"s1_a": 9, "s1_b": 14, "s2_a": 4}
    for utt, n in utts.items():
        writer.write(utt, rng.random((n, 20)).astype(np.float32))
    writer.commit()
    (data_dir / "utt2spk").write_text("".join(f"{u} {u[:2]}\n" for u in sorted(utts)))
    out = tmp_path / "units"
    assert main(["--checkpoint", str(tiny_checkpoint), "--data-dir", str(data_dir), "--feats", str(feat_dir),
                 "--out", str(out), "--batch-size", "2", "--zerospeech", "--no-progress", "--device", "cpu"]) == 0
    info = json.loads((out / "extract.json").read_text())
    assert info["n_utterances"] == 3 and info["frame_shift"] == pytest.approx(0.02)
    for utt, n in utts.items():
        dense = np.load(out / "indices" / f"{utt}.npy")
        assert len(dense) == (n + 1) // 2 and dense.min() >= 0 and dense.max() < 8
    # units of a batch equal those of the utterance alone (padding does not leak)
    extractor = UnitExtractor.from_checkpoint(tiny_checkpoint)
    from speechsq.features import FeatureReader

    alone = extractor.from_features(FeatureReader(feat_dir)["s1_b"])
    np.testing.assert_array_equal(alone["dense"].numpy(), np.load(out / "indices" / "s1_b.npy"))


def test_waveform_api_invariants(tiny_checkpoint):
    extractor = UnitExtractor.from_checkpoint(tiny_checkpoint)
    assert extractor.vocab_size == 8 and extractor.expected_sample_rate == 16000 and extractor.code_hop_size == 320
    t = np.arange(16000) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(16000)
    out = extractor(wav, sample_rate=16000)
    assert int(out["durations"].sum()) == len(out["dense"])
    assert torch.equal(torch.repeat_interleave(out["units"], out["durations"]), out["dense"])
    assert out["z_q"].shape[0] == len(out["dense"])
    with pytest.raises(ValueError, match="16000 Hz"):
        extractor(wav, sample_rate=8000)
    with pytest.raises(ValueError, match="mono"):
        extractor(np.stack([wav, wav]), sample_rate=16000)


def test_evaluate_and_report_on_a_tiny_run(tmp_path, tiny_checkpoint):
    from speechsq.eval import evaluate, report
    from speechsq.features.store import ArkWriter

    rng = np.random.default_rng(4)
    data_dir, feat_dir = tmp_path / "data", tmp_path / "feats"
    data_dir.mkdir()
    writer = ArkWriter(feat_dir)
    items = ["#file onset offset #phone prev-phone next-phone speaker"]
    utt2spk = {}
    for s in ("s1", "s2"):
        for k in range(3):
            utt = f"{s}_{k}"
            writer.write(utt, rng.random((40, 20)).astype(np.float32))
            utt2spk[utt] = s
            items += [f"{utt} 0.05 0.13 {p} x y {s}" for p in ("a", "b")[k % 2]]
    writer.commit()
    (data_dir / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(utt2spk.items())))
    (tmp_path / "items").write_text("\n".join(items) + "\n")
    run = tmp_path / "exp" / "vq_ema" / "seed1"
    assert main(["--checkpoint", str(tiny_checkpoint), "--data-dir", str(data_dir), "--feats", str(feat_dir),
                 "--out", str(run / "units"), "--no-progress", "--device", "cpu"]) == 0
    assert evaluate.main(["--checkpoint", str(tiny_checkpoint), "--exp-dir", str(run), "--mse-data", str(data_dir),
                          "--mse-feats", str(feat_dir), "--units", str(run / "units"), "--items", str(tmp_path / "items"),
                          "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["mse"]["n_frames"] == 6 * 38  # 40 frames each, first and last unscored
    assert metrics["mse_db2"] > 0 and 1 <= metrics["active_codes"] <= 8
    assert metrics["bitrate"] >= 0 and metrics["abx_within"] is not None
    assert (run / "eval" / "code_usage.png").is_file()
    assert report.main(["--exp-dir", str(tmp_path / "exp")]) == 0
    assert "VQ-VAE w/ EMA" in (tmp_path / "exp" / "results.md").read_text()
