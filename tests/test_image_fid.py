"""One row of SQ-VAE Table 2: every column checked against an independent computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from speechsq.data.images import load_image_dataset
from speechsq.errors import MismatchError
from speechsq.eval import image_fid
from speechsq.eval import latent_manipulation as LM
from speechsq.eval.fd_classifier import ClassifierFeatures, FeatureNet
from speechsq.eval.fid import feature_stats, frechet_distance
from speechsq.likelihoods import LIKELIHOODS
from speechsq.models.image import ImageVQVAE
from speechsq.models.pixelcnn import GatedPixelCNN
from speechsq.quantizers import build_quantizer

K = 8


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    q = build_quantizer("vq", num_codes=K, code_dim=8, init="normal")
    model = ImageVQVAE(q, LIKELIHOODS.get("gaussian_fixed")(sigma2=0.1), "sqvae_two_layer", 1, width=8).eval()
    split = load_image_dataset("digits", "test", limit=40)
    # codes spread over the encoder outputs, so that every code is used (an untrained
    # encoder would send all images to one or two codes)
    z = model.encode(split.tensors(np.arange(40))["images"])["z_e"].permute(0, 2, 3, 1).reshape(-1, 8)
    with torch.no_grad():
        q.codebook.copy_(z[torch.randperm(z.shape[0])[:K]])
    assert len(model.encode(split.tensors(np.arange(40))["images"])["indices"].unique()) == K
    space = ClassifierFeatures(FeatureNet(1, 10), {})
    return model, split, space


def fd_to_split(space, split, images):
    ref = feature_stats(space.features(split.tensors(np.arange(len(split)))["images"]))
    return frechet_distance(ref, feature_stats(space.features(images)))


def constant_prior(code, height=4, width=4, num_codes=K, num_classes=None):
    """All mass on one code (or uniform with code=None)."""
    prior = GatedPixelCNN(num_codes, channels=4, layers=1, kernel_size=3, head_channels=4, height=height, width=width,
                          num_classes=num_classes)  # fmt: skip
    torch.nn.init.zeros_(prior.head[-1].weight)
    with torch.no_grad():
        prior.head[-1].bias.zero_()
        if code is not None:
            prior.head[-1].bias.fill_(-1e4)
            prior.head[-1].bias[code] = 0.0
    return prior


def test_reconstruction_columns_match_an_independent_computation(setup):
    from speechsq.eval.image_metrics import evaluate_image_model

    model, split, space = setup
    images = split.tensors(np.arange(len(split)))["images"]
    ev = image_fid.Evaluation(model, split, space, batch_size=16)
    assert ev.fd([images[:5], images[5:]], "again") == pytest.approx(0.0, abs=1e-9)  # the split against itself
    assert list(ev.examples) == ["test images", "reconstruction", "again"]
    assert torch.equal(ev.examples["test images"], images[:8]) and torch.equal(ev.examples["again"], images[:5])
    torch.testing.assert_close(ev.examples["reconstruction"], model.reconstruct(images[:8]))
    assert ev.rfid == pytest.approx(fd_to_split(space, split, model.reconstruct(images)), rel=1e-9)
    assert ev.mse_x1e3 == pytest.approx(evaluate_image_model(model, split).mse_x1e3, rel=1e-9)
    assert torch.equal(ev.codes, model.encode(images)["indices"])


def test_mse_of_grey_level_categories_and_label_maps():
    from types import SimpleNamespace

    from speechsq.eval.image_metrics import evaluate_image_model

    torch.manual_seed(0)
    q = build_quantizer("vq", num_codes=K, code_dim=8)
    model = ImageVQVAE(q, LIKELIHOODS.get("categorical")(17), "sqvae_two_layer", 1, num_categories=17, width=8).eval()
    split = load_image_dataset("digits", "test", pixels="categorical", limit=20)
    space = ClassifierFeatures(FeatureNet(1, 10), {})
    ev = image_fid.Evaluation(model, split, space, batch_size=8)
    assert ev.mse_x1e3 == pytest.approx(evaluate_image_model(model, split).mse_x1e3, rel=1e-9)  # level / 16
    # ids 0 and 16 against 8: (8/16)^2 each
    grey = SimpleNamespace(label_map=False, kind="categorical", num_values=17)
    assert image_fid.squared_error(torch.tensor([0, 16]), torch.tensor([8, 8]), grey) == pytest.approx(0.5)
    assert image_fid.squared_error(torch.tensor([0]), torch.tensor([3]), SimpleNamespace(label_map=True)) is None


def test_neighbor_and_interpolation_columns(setup, monkeypatch):
    model, split, space = setup
    images = split.tensors(np.arange(len(split)))["images"]
    codes = model.encode(images)["indices"]
    row = image_fid.evaluate_table2(model, split, space, neighbor_ks=(3,), batch_size=16)
    vectors = model.quantizer.codebook.detach().double()
    by_sorting = []
    for c in range(K):
        d = sorted((float(((vectors[c] - vectors[o]) ** 2).sum()), o) for o in range(K) if o != c)
        by_sorting.append(d[2][1])
    moved = torch.tensor(by_sorting)[codes]
    assert row.neighbor["3"] == pytest.approx(fd_to_split(space, split, model.decode_indices(moved)), rel=1e-9)
    assert row.neighbor["3"] != pytest.approx(row.rfid)
    assert row.generation is None and row.prior_test_nll_nats is None
    # ratio 0 keeps the first image of every pair and ratio 1 the second: both are a
    # permutation of the reconstructions, so the interpolation FD equals the rFD
    for ratio in (0.0, 1.0):
        monkeypatch.setattr(LM, "mixing_ratios", lambda n, seed=0, r=ratio: np.full(n, r))
        fixed = image_fid.evaluate_table2(model, split, space, neighbor_ks=(), batch_size=16)
        assert fixed.interp == pytest.approx(fixed.rfid, rel=1e-9, abs=1e-12)
    assert row.interp != pytest.approx(row.rfid)


def test_generation_and_prior_columns(setup):
    model, split, space = setup
    row = image_fid.evaluate_table2(model, split, space, prior=constant_prior(5), neighbor_ks=(), samples=7)
    only_five = model.decode_indices(torch.full((7, 4, 4), 5))
    assert row.generated == 7
    assert row.generation == pytest.approx(fd_to_split(space, split, only_five), rel=1e-9)
    uniform = image_fid.evaluate_table2(model, split, space, prior=constant_prior(None), neighbor_ks=())
    assert uniform.prior_test_nll_nats == pytest.approx(16 * math.log(K), rel=1e-6)
    assert uniform.prior_test_bits_per_code == pytest.approx(3.0, rel=1e-6)
    assert uniform.generated == len(split)
    conditional = image_fid.evaluate_table2(model, split, space, prior=constant_prior(5, num_classes=10), neighbor_ks=(), samples=7)
    assert conditional.generation == pytest.approx(row.generation, rel=1e-9)  # labels drawn, codes still all 5
    with pytest.raises(MismatchError, match="the prior models 9 codes, the image model has 8"):
        image_fid.evaluate_table2(model, split, space, prior=constant_prior(None, num_codes=9), neighbor_ks=())
    with pytest.raises(MismatchError, match="trained on 5x4 code maps, the model gives 4x4"):
        image_fid.evaluate_table2(model, split, space, prior=constant_prior(None, height=5), neighbor_ks=())


def test_command_writes_a_labelled_row(tmp_path, capsys):
    from speechsq.training import build_run, compose_config

    cfg = compose_config([
        "experiment=images_digits", "quantizer=vq", "quantizer.num_codes=8", "quantizer.code_dim=8", "model.width=8",
        "data.limit=40", "training.steps=2", "training.progress=false", f"exp_dir={tmp_path / 'vq'}",
    ])  # fmt: skip
    build_run(cfg).fit()
    out = tmp_path / "fid.json"
    code = image_fid.main([
        "--checkpoint", str(tmp_path / "vq" / "checkpoints" / "last.pt"), "--limit", "30", "--neighbors", "1,2",
        "--classifier-steps", "5", "--out", str(out), "--figure", str(tmp_path / "examples.png"),
    ])  # fmt: skip
    assert code == 0
    from PIL import Image

    with Image.open(tmp_path / "examples.png") as png:  # rows: test, reconstruction, Neighbor-1, -2, interpolation
        assert png.size[1] == pytest.approx(100 * 1.15 * 5, abs=2)
    row = json.loads(out.read_text())
    assert row["feature_space"]["label"] == "FD (speechsq classifier, not comparable to published FID)"
    assert row["feature_space"]["directory"] == str(tmp_path / "fd_classifier")  # next to the model's directory
    assert set(row["neighbor"]) == {"1", "2"} and row["images"] == 30 and row["generation"] is None
    with pytest.raises(LM.ManipulationError, match="--neighbors must be comma-separated integers"):
        image_fid.main(["--checkpoint", str(tmp_path / "vq" / "checkpoints" / "last.pt"), "--neighbors", "3,x"])
