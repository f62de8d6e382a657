"""Unit extraction: run-length encoding, the files written, the ZeroSpeech tree, padding
invariance of batched extraction, and a tiny real checkpoint through the CLI and the API."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from speechsq.completion import keys_digest, mark_complete

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
    indices = np.load(tmp_path / "indices" / "utt0.npy")
    np.testing.assert_array_equal(rows, np.eye(3)[indices])  # a 1 in the column of each frame's code
    known = {"k": one_hot_feats([0, 2, 1, 1])}
    extract(FakeModel(), known, tmp_path / "onehot", frame_shift=0.01, zerospeech=True, embedding="onehot", progress=False)
    assert (tmp_path / "onehot/zerospeech/test/k.txt").read_text() == "1 0 0\n0 0 1\n0 1 0\n0 1 0\n"
    extract(FakeModel(), known, tmp_path / "index", frame_shift=0.01, zerospeech=True, embedding="index", progress=False)
    assert (tmp_path / "index/zerospeech/test/k.txt").read_text() == "0\n2\n1\n1\n"
    with pytest.raises(ValueError, match="unknown ZeroSpeech embedding"):
        extract(FakeModel(), feats, tmp_path, frame_shift=0.01, embedding="bogus", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        list(encode_batches(FakeModel(), feats, batch_size=0))


# --------------------------------------------------------------------------- tiny real model


def make_checkpoint(path, seed: int = 0, step: int = 0):
    from omegaconf import OmegaConf

    from speechsq.models import build_model
    from speechsq.training import compose_config

    cfg = compose_config([
        "experiment=mini", "quantizer=vq_ema", "model.n_speakers=2", "model.speakers=[s1,s2]",
        "model.encoder_channels=16", "quantizer.num_codes=8", "quantizer.code_dim=4", "data.feats_dir=unused",
        "preprocessing.n_mels=20",
    ])
    torch.manual_seed(seed)
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "step": step, "config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt")


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
    # units of a batch equal those of each utterance alone (padding does not leak)
    extractor = UnitExtractor.from_checkpoint(tiny_checkpoint)
    from speechsq.features import FeatureReader

    for utt, n in utts.items():
        dense = np.load(out / "indices" / f"{utt}.npy")
        alone = extractor.from_features(FeatureReader(feat_dir)[utt])
        assert len(dense) == (n + 1) // 2
        np.testing.assert_array_equal(alone["frame_units"].numpy(), dense)
        np.testing.assert_array_equal(alone["z_q"].numpy(), np.load(out / "z_q" / f"{utt}.npy"))


def test_waveform_api_invariants(tiny_checkpoint):
    extractor = UnitExtractor.from_checkpoint(tiny_checkpoint)
    assert extractor.vocab_size == 8 and extractor.expected_sample_rate == 16000 and extractor.code_hop_size == 320
    t = np.arange(16000) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(16000)
    out = extractor(wav, sample_rate=16000)
    assert int(out["durations"].sum()) == len(out["frame_units"])
    assert torch.equal(torch.repeat_interleave(out["units"], out["durations"]), out["frame_units"])
    assert out["z_q"].shape[0] == len(out["frame_units"])
    with pytest.warns(DeprecationWarning, match='use "frame_units"'):
        assert torch.equal(out["dense"], out["frame_units"])  # the old name still reads
    # any rate and channel count: resampled / mixed down (speechsq.api), no longer refused
    assert torch.equal(extractor(np.stack([wav, wav]), sample_rate=16000)["frame_units"], out["frame_units"])
    assert len(extractor(wav[::2], sample_rate=8000)["frame_units"]) == len(out["frame_units"])


def make_set(root, utts: dict[str, int], skipped: dict[str, str] | None = None, n_mels: int = 20, seed: int = 4):
    """A data dir (utt2spk, speaker = first 2 characters) and a complete feature dir with random
    features of ``utts`` (name -> frames); ``skipped`` utterances are in the data dir and listed
    in the feature dir's ``skipped`` (as compute-feats does for unusable audio)."""
    from speechsq.features.store import SKIPPED, ArkWriter

    rng = np.random.default_rng(seed)
    skipped = skipped or {}
    data_dir, feat_dir = root / "data", root / "feats"
    data_dir.mkdir(parents=True)
    (data_dir / "utt2spk").write_text("".join(f"{u} {u[:2]}\n" for u in sorted({**utts, **skipped})))
    (data_dir / "wav.scp").write_text("".join(f"{u} /{u}.wav\n" for u in sorted({**utts, **skipped})))
    writer = ArkWriter(feat_dir)
    feats = {}
    for utt, n in utts.items():
        feats[utt] = rng.random((n, n_mels)).astype(np.float32)
        writer.write(utt, feats[utt])
    writer.stage_text(SKIPPED, "".join(f"{u} {r}\n" for u, r in skipped.items()))
    writer.commit(data_dir=str(data_dir))
    return data_dir, feat_dir, feats


def entropy_bits_by_hand(counts) -> float:
    n = sum(counts)
    return sum(c / n * math.log2(n / c) for c in counts)


def test_evaluate_and_report_on_a_tiny_run(tmp_path, tiny_checkpoint):
    from speechsq.eval import evaluate, report
    from speechsq.training import load_model

    utts = {f"{s}_{k}": 40 for s in ("s1", "s2") for k in range(3)}
    data_dir, feat_dir, feats = make_set(tmp_path, utts)
    items = ["#file onset offset #phone prev-phone next-phone speaker"]
    for k, utt in enumerate(sorted(utts)):
        items += [f"{utt} 0.05 0.13 {'ab'[k % 2]} x y {utt[:2]}"]
    (tmp_path / "items").write_text("\n".join(items) + "\n")
    run = tmp_path / "exp" / "vq_ema" / "seed1"
    assert main(["--checkpoint", str(tiny_checkpoint), "--data-dir", str(data_dir), "--feats", str(feat_dir),
                 "--out", str(run / "units"), "--no-progress", "--device", "cpu"]) == 0
    assert evaluate.main(["--checkpoint", str(tiny_checkpoint), "--exp-dir", str(run), "--mse-data", str(data_dir),
                          "--mse-feats", str(feat_dir), "--units", str(run / "units"), "--items", str(tmp_path / "items"),
                          "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    # MSE recomputed one utterance at a time, independently of the batched evaluation
    model, _ = load_model(tiny_checkpoint)
    total = 0.0
    for utt, x in feats.items():
        with torch.no_grad():
            x_hat = model.reconstruct(torch.from_numpy(x.T[None]), torch.tensor([40]), model.speaker_ids([utt[:2]]))[0].numpy()
        total += float((((x_hat[:, 1:39] - x.T[:, 1:39]).astype(np.float64) * 80.0) ** 2).sum())
    assert metrics["mse"]["n_frames"] == 6 * 38  # 40 frames each, first and last unscored
    assert metrics["mse_db2"] == pytest.approx(total / (20 * 6 * 38), rel=1e-5)
    # bitrate, perplexity, active codes from the extracted indices, by hand
    indices = np.concatenate([np.load(run / "units" / "indices" / f"{u}.npy") for u in sorted(utts)])
    counts = np.bincount(indices, minlength=8)
    h = entropy_bits_by_hand([c for c in counts if c])
    assert len(indices) == 6 * 20 and metrics["active_codes"] == int((counts > 0).sum())
    assert metrics["bitrate"] == pytest.approx(len(indices) * h / (len(indices) * 0.02))
    assert metrics["perplexity"] == pytest.approx(2**h)
    assert metrics["abx_items_dropped"] == 0
    assert (run / "eval" / "code_usage.png").is_file()
    marker = json.loads((run / "eval" / "complete.json").read_text())
    assert (marker["kind"], marker["count"], marker["checkpoint_step"]) == ("eval", 2, 0)
    assert marker["units"] == str((run / "units").resolve()) and marker["items"] == str((tmp_path / "items").resolve())
    assert report.main(["--exp-dir", str(tmp_path / "exp")]) == 0
    assert "VQ-VAE w/ EMA" in (tmp_path / "exp" / "results.md").read_text()


# ------------------------------------------------------------ hand-computed units, durations, bitrate
def one_hot_feats(indices: list[int], n_mels: int = 5) -> np.ndarray:
    """Features that FakeModel encodes to exactly ``indices`` (two frames per latent frame)."""
    x = np.zeros((2 * len(indices), n_mels), np.float32)
    for k, code in enumerate(indices):
        x[2 * k : 2 * k + 2, code] = 1.0
    return x


def test_units_and_durations_of_a_known_index_sequence(tmp_path):
    feats = {"a": one_hot_feats([0, 0, 1, 1, 1, 2]), "b": one_hot_feats([2, 2])}
    info = extract(FakeModel(), feats, tmp_path / "u", frame_shift=0.01, progress=False)
    assert (tmp_path / "u/units.txt").read_text() == "a 0 1 2\nb 2\n"
    assert (tmp_path / "u/durations.txt").read_text() == "a 2 3 1\nb 2\n"
    assert np.load(tmp_path / "u/indices/a.npy").tolist() == [0, 0, 1, 1, 1, 2]
    assert (info["n_utterances"], info["n_unit_frames"], info["frame_shift"]) == (2, 8, 0.02)
    marker = json.loads((tmp_path / "u/complete.json").read_text())
    assert (marker["kind"], marker["count"], marker["frame_shift"]) == ("units", 2, 0.02)


def test_evaluate_bitrate_and_codebook_by_hand(tmp_path, tiny_checkpoint):
    """Units with known indices, marked as extracted with the tiny checkpoint (10 ms features,
    x2 downsampling: 20 ms per unit): N = 6, counts (2, 1, 3), D = 6 x 0.02 s."""
    from speechsq.eval import evaluate
    from speechsq.eval.inputs import checkpoint_identity

    feats = {"a": one_hot_feats([0, 0, 1, 2]), "b": one_hot_feats([2, 2])}
    extract(FakeModel(), feats, tmp_path / "units", frame_shift=0.01, progress=False,
            info=checkpoint_identity(tiny_checkpoint))
    assert evaluate.main(["--checkpoint", str(tiny_checkpoint), "--exp-dir", str(tmp_path / "run"),
                          "--units", str(tmp_path / "units"), "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "run/eval/metrics.json").read_text())
    h = (2 * math.log2(3) + math.log2(6) + 3 * math.log2(2)) / 6  # -sum p log2 p, p = (1/3, 1/6, 1/2)
    assert metrics["bitrate_detail"] == pytest.approx(
        {"bitrate": 6 * h / 0.12, "entropy_bits": h, "n_symbols": 6, "duration_s": 0.12, "n_distinct": 3})
    assert metrics["bitrate"] == pytest.approx(50 * h)  # 76.0 bit/s
    assert metrics["perplexity"] == pytest.approx(2**h) and metrics["active_codes"] == 3
    assert metrics["codebook"] == pytest.approx(
        {"num_codes": 8, "perplexity": 2**h, "active_codes": 3, "entropy_bits": h, "n_frames": 6})


def test_evaluate_reports_within_and_across_speaker_abx_of_known_units(tmp_path, tiny_checkpoint):
    """One-hot codes (FakeModel's z_q): speaker s1 says a with code 0 and b with code 1, s2 the
    other way round. Within speaker every X is at angle 0 from its A and 1/2 from every B:
    error 0 %. Across speaker X (s2's a, code 1) is 0 from B (s1's b) and 1/2 from A: 100 %.
    Units of 20 ms: items of 0.06 s hold frames 0 and 1 (at 10 ms they would end past the file).
    The encoder output z_e is the same everywhere (all ties: 50 %), so scoring it instead of z_q shows."""
    from speechsq.errors import MismatchError
    from speechsq.eval import evaluate
    from speechsq.eval.inputs import checkpoint_identity

    class FlatLatents(FakeModel):
        def encode(self, feats, lengths):
            out = super().encode(feats, lengths)
            return {**out, "z_e": torch.ones_like(out["z_e"])}

    codes = {("s1", "a"): 0, ("s1", "b"): 1, ("s2", "a"): 1, ("s2", "b"): 0}
    feats, items = {}, ["#file onset offset #phone prev-phone next-phone speaker"]
    for (speaker, phone), code in codes.items():
        for k in (1, 2):
            utt = f"{speaker}_{phone}{k}"
            feats[utt] = one_hot_feats([code] * 3)
            items.append(f"{utt} 0.0 0.06 {phone} x y {speaker}")
    (tmp_path / "items").write_text("\n".join(items) + "\n")

    extract(FlatLatents(), feats, tmp_path / "units", frame_shift=0.01, progress=False, info=checkpoint_identity(tiny_checkpoint))

    def abx(*options):
        assert evaluate.main(["--checkpoint", str(tiny_checkpoint), "--exp-dir", str(tmp_path / "run"), "--units",
                              str(tmp_path / "units"), "--items", str(tmp_path / "items"), "--no-progress", "--device",
                              "cpu", *options]) == 0
        return json.loads((tmp_path / "run/eval/metrics.json").read_text())

    metrics = abx()  # the quantised codes z_q, cosine
    assert (metrics["abx_within"], metrics["abx_across"]) == (0.0, 100.0)
    assert metrics["abx"]["scores"] == {"within-within": 0.0, "across-within": 100.0}  # within context only
    assert (metrics["abx"]["settings"]["frame_shift"], metrics["abx"]["settings"]["distance"]) == (0.02, "cosine")
    metrics = abx("--abx-features", "indices")  # unit indices: the edit distance
    assert (metrics["abx_within"], metrics["abx_across"], metrics["abx"]["settings"]["distance"]) == (0.0, 100.0, "edit")
    metrics = abx("--abx-features", "z_e")
    assert (metrics["abx_within"], metrics["abx_across"]) == (50.0, 50.0)
    # units made at another frame shift than the checkpoint's (10 ms features, x2) are refused
    extract(FakeModel(), feats, tmp_path / "other", frame_shift=0.005, progress=False, info=checkpoint_identity(tiny_checkpoint))
    with pytest.raises(MismatchError, match=r"have a frame shift of 0.01 s, the checkpoint's units 0.02 s"):
        evaluate.main(["--checkpoint", str(tiny_checkpoint), "--exp-dir", str(tmp_path / "run2"), "--units",
                       str(tmp_path / "other"), "--no-progress", "--device", "cpu"])


# ------------------------------------------------------------------------- extract: input checks
def run_extract(checkpoint, *args) -> int:
    return main(["--checkpoint", str(checkpoint), "--no-progress", "--device", "cpu", *map(str, args)])


def test_extract_data_dir_checks(tmp_path, tiny_checkpoint):
    from speechsq.data_prep.kaldi_dir import DataDirError
    from speechsq.errors import IncompleteOutputError, MismatchError

    data_dir, feat_dir, _ = make_set(tmp_path / "a", {"s1_a": 9, "s1_b": 14, "s2_a": 6, "s2_b": 8})
    other_data, other_feats, _ = make_set(tmp_path / "b", {"s1_x": 9, "s2_y": 9})
    out = tmp_path / "units"
    with pytest.raises(DataDirError, match="nope: no such data directory"):
        run_extract(tiny_checkpoint, "--data-dir", tmp_path / "nope", "--feats", feat_dir, "--out", out)
    with pytest.raises(MismatchError, match=rf"no utterance of {data_dir} \(4\) has features in {other_feats} "
                                            rf"\(2 utterances, computed from {other_data}\)"):
        run_extract(tiny_checkpoint, "--data-dir", data_dir, "--feats", other_feats, "--out", out)
    # a data dir with one more utterance than the features: partial overlap
    (data_dir / "utt2spk").write_text((data_dir / "utt2spk").read_text() + "s2_c s2\n")
    with pytest.raises(MismatchError, match=rf"1 of the 5 utterances of {data_dir} have no features in {feat_dir} "
                                            r".*e.g. s2_c.*--allow-missing"):
        run_extract(tiny_checkpoint, "--data-dir", data_dir, "--feats", feat_dir, "--out", out)
    assert not out.exists()
    assert run_extract(tiny_checkpoint, "--data-dir", data_dir, "--feats", feat_dir, "--out", out, "--allow-missing") == 0
    info = json.loads((out / "extract.json").read_text())
    assert (info["n_utterances"], info["missing"], info["skipped_by_features"]) == (4, ["s2_c"], {})
    marker = json.loads((out / "complete.json").read_text())
    assert (marker["count"], marker["missing"], marker["data_dir"], marker["feats_dir"]) == (
        4, ["s2_c"], str(data_dir.resolve()), str(feat_dir.resolve()))
    (feat_dir / "complete.json").unlink()
    with pytest.raises(IncompleteOutputError, match=r"feats is incomplete \(no complete.json"):
        run_extract(tiny_checkpoint, "--data-dir", data_dir, "--feats", feat_dir, "--out", out)


def test_extract_leaves_out_what_compute_feats_skipped(tmp_path, tiny_checkpoint):
    data_dir, feat_dir, _ = make_set(tmp_path, {"s1_a": 9, "s2_a": 8}, skipped={"s2_b": "silent"})
    assert run_extract(tiny_checkpoint, "--data-dir", data_dir, "--feats", feat_dir, "--out", tmp_path / "u") == 0
    info = json.loads((tmp_path / "u/extract.json").read_text())
    assert (info["n_utterances"], info["skipped_by_features"], info["missing"]) == (2, {"s2_b": "silent"}, [])
    assert (info["checkpoint"], info["checkpoint_step"]) == (str(tiny_checkpoint.resolve()), 0)
    assert info["checkpoint_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()


def test_extract_nan_features_one_line_naming_the_utterance(tmp_path, tiny_checkpoint, capsys):
    from speechsq import cli

    out = tmp_path / "feats"
    out.mkdir()
    bad = np.ones((8, 20), np.float32)
    bad[5, 3] = np.nan
    with open(out / "feats.ark", "wb") as f:
        kaldiio.save_ark(f, {"s1_a": np.ones((8, 20), np.float32), "s1_b": bad}, scp=str(out / "feats.scp"))
    mark_complete(out, "features", ["s1_a", "s1_b"], producer="test")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/utt2spk").write_text("s1_a s1\ns1_b s1\n")
    assert cli.main(["extract", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(tmp_path / "data"), "--feats",
                     str(out), "--out", str(tmp_path / "u"), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"speechsq extract: error: utterance 's1_b' in {out / 'feats.ark'} has 1 NaN/Inf values "
                   "(first at frame 5); recompute these features (`speechsq compute-feats`) and check the audio"]
    assert not (tmp_path / "u").exists()


class NaNModel(FakeModel):
    """Poisons one output (``z_e`` or ``z_q``) of the frames that come from code 2."""

    def __init__(self, poisoned: str):
        self.poisoned = poisoned

    def encode(self, feats, lengths):
        out = super().encode(feats, lengths)
        bad = (out["indices"] == 2)[..., None]
        out[self.poisoned] = torch.where(bad, torch.full_like(out[self.poisoned], float("inf")), out[self.poisoned])
        return out


@pytest.mark.parametrize("poisoned", ["z_e", "z_q"])
def test_model_nan_output_stops_extraction_and_keeps_old_units(tmp_path, poisoned):
    from speechsq.eval.inputs import NonFiniteOutputError

    feats = {"a": one_hot_feats([0, 1]), "b": one_hot_feats([2])}
    extract(FakeModel(), feats, tmp_path / "u", frame_shift=0.01, progress=False)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "u").rglob("*")) if p.is_file()}
    with pytest.raises(NonFiniteOutputError, match=f"ckpt.pt gives NaN/Inf {poisoned} for utterance 'b'"):
        extract(NaNModel(poisoned), feats, tmp_path / "u", frame_shift=0.01, progress=False, info={"checkpoint": "ckpt.pt"})
    after = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "u").rglob("*")) if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["u"]  # no partial dir left


def test_extract_refuses_to_replace_a_foreign_directory(tmp_path):
    from speechsq.data_prep.staging import OutputDirError

    (tmp_path / "results").mkdir()
    (tmp_path / "results/paper.tex").write_text("precious")
    with pytest.raises(OutputDirError, match="results exists and does not look like a units directory"):
        extract(FakeModel(), {"a": one_hot_feats([1])}, tmp_path / "results", frame_shift=0.01, progress=False)
    assert (tmp_path / "results/paper.tex").read_text() == "precious"


@pytest.mark.parametrize("args,message", [
    (["--data-dir", "d"], "--data-dir needs --feats"),
    (["--wav", "w", "--feats", "f"], "--feats goes with --data-dir"),
    (["--data-dir", "d", "--feats", "f", "--strict-sample-rate"], "--strict-sample-rate applies to --wav input"),
])
def test_extract_option_combinations(tmp_path, args, message):
    from speechsq.eval.inputs import EvalInputError

    with pytest.raises(EvalInputError, match=message):
        main(["--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "u"), *args])


@pytest.mark.parametrize("args,message", [
    (["--items", "i"], "--items needs --units"),
    (["--probe-ali", "a", "--units", "u"], "--probe-ali needs --units and --probe-data"),
    (["--baseline-feats", "f"], "--baseline-feats needs --items"),
])
def test_evaluate_option_combinations(tmp_path, tiny_checkpoint, args, message):
    from speechsq.eval import evaluate
    from speechsq.eval.inputs import EvalInputError

    with pytest.raises(EvalInputError, match=message):
        evaluate.main(["--checkpoint", str(tiny_checkpoint), "--exp-dir", str(tmp_path / "run"), *args])
    with pytest.raises(EvalInputError, match="nope.pt: no such checkpoint file"):
        evaluate.main(["--checkpoint", str(tmp_path / "nope.pt"), "--exp-dir", str(tmp_path / "run")])


# ------------------------------------------------------------------------------- extract: audio input
def speechy(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def test_extract_audio_file_or_folder(tmp_path, tiny_checkpoint, monkeypatch):
    from speechsq.features import build_pipeline
    from speechsq.features.logmel import LogMelPipeline

    wavs = tmp_path / "wavs"
    (wavs / "sub").mkdir(parents=True)
    sf.write(wavs / "s1_a.WAV", speechy(0.4, 16000, 1), 16000, subtype="PCM_16")
    sf.write(wavs / "sub/s1_b.flac", speechy(0.3, 16000, 2), 16000, format="FLAC")
    sf.write(wavs / "sub/s2_c.wav", np.stack([speechy(0.3, 16000, 3)] * 2, axis=1), 16000, subtype="PCM_16")
    sf.write(wavs / "s2_d.wav", np.zeros(4000, np.float32), 16000, subtype="PCM_16")  # silent
    (wavs / "s2_e.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVE")  # truncated
    calls = []
    real = LogMelPipeline.featurize
    monkeypatch.setattr(LogMelPipeline, "featurize", lambda self, path: calls.append(Path(path).name) or real(self, path))
    assert run_extract(tiny_checkpoint, "--wav", wavs, "--out", tmp_path / "u") == 0
    assert sorted(calls) == ["s1_a.WAV", "s1_b.flac", "s2_c.wav", "s2_d.wav", "s2_e.wav"]  # each file once
    info = json.loads((tmp_path / "u/extract.json").read_text())
    assert info["n_utterances"] == 3 and info["wav"] == str(wavs.resolve())
    audio = info["audio"]
    assert [(Path(s["path"]).name, s["reason"]) for s in audio["skipped"]] == [("s2_d.wav", "silent"), ("s2_e.wav", "not-audio")]
    assert (audio["files"], audio["usable"], audio["notes"]) == (5, 3, {"s2_c": "mixed 2 channels down to mono"})
    marker = json.loads((tmp_path / "u/complete.json").read_text())
    assert marker["count"] == 3 and marker["keys_sha256"] == keys_digest(["s1_a", "s1_b", "s2_c"])
    extractor = UnitExtractor.from_checkpoint(tiny_checkpoint)
    pipeline = build_pipeline(extractor.cfg["preprocessing"])
    expected = extractor.from_features(pipeline(wavs / "sub/s1_b.flac"))["frame_units"].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "u/indices/s1_b.npy"), expected)
    # one file, through the old option name
    assert run_extract(tiny_checkpoint, "--wav-dir", wavs / "s1_a.WAV", "--out", tmp_path / "one") == 0
    assert (tmp_path / "one/units.txt").read_text().split()[0] == "s1_a"
    assert sorted(p.name for p in (tmp_path / "one/indices").iterdir()) == ["s1_a.npy"]


def test_extract_audio_input_errors(tmp_path, tiny_checkpoint):
    from speechsq.data_prep.audio import AudioInputError
    from speechsq.errors import MismatchError

    wavs = tmp_path / "wavs"
    (wavs / "x").mkdir(parents=True)
    (wavs / "y").mkdir()
    sf.write(wavs / "x/utt.wav", speechy(0.3, 16000), 16000)
    sf.write(wavs / "y/utt.ogg", speechy(0.3, 16000), 16000, format="OGG")
    with pytest.raises(AudioInputError, match=r"x/utt\.wav and .*y/utt\.ogg would both be utterance 'utt'"):
        run_extract(tiny_checkpoint, "--wav", wavs, "--out", tmp_path / "u")
    (wavs / "y/utt.ogg").unlink()
    sf.write(wavs / "y/low.wav", speechy(0.3, 8000), 8000)
    with pytest.raises(MismatchError, match=r"1 of 2 files are not at 16000 Hz \(8000 Hz: 1"):
        run_extract(tiny_checkpoint, "--wav", wavs, "--out", tmp_path / "u", "--strict-sample-rate")
    assert run_extract(tiny_checkpoint, "--wav", wavs, "--out", tmp_path / "u") == 0
    info = json.loads((tmp_path / "u/extract.json").read_text())
    assert info["audio"]["notes"] == {"low": "resampled 8000 Hz -> 16000 Hz"}
    assert info["audio"]["by_sample_rate"] == {"8000": 1, "16000": 1}
    with pytest.raises(AudioInputError, match="nothing.wav does not exist"):
        run_extract(tiny_checkpoint, "--wav", tmp_path / "nothing.wav", "--out", tmp_path / "v")


# ----------------------------------------------------------------------------- evaluate: refusals
def test_evaluate_refuses_incomplete_or_mismatched_units(tmp_path, tiny_checkpoint):
    from speechsq.eval import evaluate
    from speechsq.errors import IncompleteOutputError, MismatchError

    data_dir, feat_dir, _ = make_set(tmp_path / "test", {"s1_a": 12, "s2_a": 12}, skipped={"s2_b": "silent"})
    other_data, other_feats, _ = make_set(tmp_path / "parallel", {"s1_p": 12, "s2_p": 12})
    units = tmp_path / "units"
    assert run_extract(tiny_checkpoint, "--data-dir", data_dir, "--feats", feat_dir, "--out", units) == 0

    def run(*args):
        return evaluate.main(["--checkpoint", str(tiny_checkpoint), "--exp-dir", str(tmp_path / "run"), "--no-progress",
                              "--device", "cpu", *map(str, args)])

    items = tmp_path / "items"
    items.write_text("#file onset offset #phone prev-phone next-phone speaker\n"
                     "s1_a 0.02 0.08 a x y s1\ns2_a 0.02 0.08 b x y s2\ns1_p 0.02 0.08 a x y s1\n")
    with pytest.raises(MismatchError, match=rf"1 of the 3 utterances of the item file {items} are not in the units {units} "
                                            rf"\(extracted from data dir {data_dir.resolve()}\) \(e.g. s1_p\)"):
        run("--units", units, "--items", items)
    assert not (tmp_path / "run/eval/complete.json").exists()
    # items of an utterance compute-feats skipped are dropped and counted
    items.write_text("#file onset offset #phone prev-phone next-phone speaker\n"
                     "s1_a 0.02 0.08 a x y s1\ns2_a 0.02 0.08 a x y s2\ns2_b 0.02 0.08 a x y s2\n")
    assert run("--units", units, "--items", items) == 0
    metrics = json.loads((tmp_path / "run/eval/metrics.json").read_text())
    assert metrics["abx_items_dropped"] == 1
    assert (tmp_path / "run/eval/items.used").read_text().count("\n") == 3
    with pytest.raises(MismatchError, match=rf"features {other_feats} \(computed from {other_data}\) have no utterance "
                                            rf"in common with {data_dir}"):
        run("--mse-data", data_dir, "--mse-feats", other_feats)
    with pytest.raises(MismatchError, match=r"2 of the 2 utterances of the units .* are not in --probe-data"):
        run("--units", units, "--probe-data", other_data, "--probe-ali", tmp_path / "ali")
    other_ckpt = make_checkpoint(tmp_path / "other.pt", seed=1, step=7)
    with pytest.raises(MismatchError, match=rf"units in {units} were extracted with {tiny_checkpoint.resolve()} \(step 0\), "
                                            rf"not with the evaluated checkpoint {other_ckpt.resolve()} \(step 7\)"):
        evaluate.main(["--checkpoint", str(other_ckpt), "--exp-dir", str(tmp_path / "run"), "--units", str(units)])
    (units / "indices" / "s1_a.npy").unlink()
    with pytest.raises(IncompleteOutputError, match="indices holds 1 utterances but its complete.json says 2"):
        run("--units", units)
    (units / "complete.json").unlink()
    with pytest.raises(IncompleteOutputError, match=r"units is incomplete \(no complete.json.*run `speechsq extract` again"):
        run("--units", units)


def test_disk_full_during_extraction_keeps_the_old_units(tmp_path, monkeypatch):
    import errno

    from speechsq.eval import extract as extract_module
    from speechsq.errors import DiskFullError

    feats = {"a": one_hot_feats([0, 1]), "b": one_hot_feats([2])}
    extract(FakeModel(), feats, tmp_path / "u", frame_shift=0.01, progress=False)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "u").rglob("*")) if p.is_file()}
    real_save = np.save

    def save(path, array, *args, **kw):
        if Path(path).stem == "b":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, array, *args, **kw)

    monkeypatch.setattr(extract_module.np, "save", save)
    with pytest.raises(DiskFullError, match=rf"^No space left on device: {tmp_path / 'u'}$"):
        extract(FakeModel(), feats, tmp_path / "u", frame_shift=0.01, progress=False)
    monkeypatch.undo()
    after = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "u").rglob("*")) if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["u"]


def test_evaluate_leaves_out_what_compute_feats_skipped_and_checks_the_baseline(tmp_path, tiny_checkpoint):
    from speechsq.eval import evaluate
    from speechsq.errors import MismatchError

    data_dir, feat_dir, _ = make_set(tmp_path / "test", {"s1_a": 12, "s2_a": 12}, skipped={"s2_b": "silent"})
    assert evaluate.main(["--checkpoint", str(tiny_checkpoint), "--exp-dir", str(tmp_path / "run"), "--mse-data",
                          str(data_dir), "--mse-feats", str(feat_dir), "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "run/eval/metrics.json").read_text())
    assert (metrics["mse"]["n_utterances"], metrics["mse"]["n_frames"], metrics["mse"]["no_features"]) == (2, 20, 1)
    assert metrics["bitrate_detail"]["n_symbols"] == 12  # units of the two scored utterances, 6 each

    items = tmp_path / "items"
    items.write_text("#file onset offset #phone prev-phone next-phone speaker\n"
                     "s1_a 0.02 0.08 a x y s1\ns2_a 0.02 0.08 a x y s2\ns2_b 0.02 0.08 a x y s2\n")
    base = tmp_path / "baseline"
    assert evaluate.main(["--exp-dir", str(base), "--baseline-feats", str(feat_dir), "--items", str(items)]) == 0
    baseline = json.loads((base / "eval/metrics.json").read_text())
    assert baseline["abx_items_dropped"] == 1
    # log-Mel frames of 10 ms, the within-context conditions of the paper's table
    assert (baseline["abx"]["settings"]["frame_shift"], sorted(baseline["abx"]["scores"])) == (0.01, ["across-within", "within-within"])
    assert json.loads((base / "eval/complete.json").read_text())["baseline_feats"] == str(feat_dir.resolve())
    items.write_text(items.read_text() + "s9_z 0.02 0.08 a x y s9\n")
    with pytest.raises(MismatchError, match=rf"1 of the 4 utterances of the item file {items} are not in the features {feat_dir}"):
        evaluate.main(["--exp-dir", str(base), "--baseline-feats", str(feat_dir), "--items", str(items)])
    assert not (base / "eval/complete.json").exists()
