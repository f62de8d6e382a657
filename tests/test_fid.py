"""Fréchet distances: closed forms, singular covariances, agreement with torch-fidelity,
the local-weights Inception path, and the offline classifier feature space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from external_tools import require_module

from speechsq.errors import MismatchError
from speechsq.eval.fid import (
    OFFLINE_LABEL,
    FidError,
    GaussianStats,
    feature_stats,
    frechet_distance,
    images_as_float,
    psd_sqrt,
    trace_sqrt_product,
)


def _stats(mean, cov):
    return GaussianStats(np.asarray(mean, float), np.asarray(cov, float), 100)


def test_two_gaussians_in_2d_match_the_closed_form():
    """For 2x2 covariances, tr((S1 S2)^{1/2}) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) (the
    eigenvalues of S1 S2 are real and >= 0: (sqrt l1 + sqrt l2)^2 = tr + 2 sqrt det)."""
    s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])  # does not commute with s1
    m1, m2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    trace_sqrt = np.sqrt(np.trace(s1 @ s2) + 2.0 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt
    assert frechet_distance(_stats(m1, s1), _stats(m2, s2)) == pytest.approx(expected, abs=1e-9)
    assert frechet_distance(_stats(m2, s2), _stats(m1, s1)) == pytest.approx(expected, abs=1e-9)  # symmetric


def test_diagonal_covariances_give_the_sum_of_squared_root_differences():
    a, b = np.array([4.0, 1.0, 0.25]), np.array([1.0, 9.0, 0.25])
    expected = 3.0**2 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # means (3, 0, 0) and 0; (2-1)^2 + (1-3)^2 + 0 = 5
    assert expected == pytest.approx(14.0)
    assert frechet_distance(_stats([3, 0, 0], np.diag(a)), _stats([0, 0, 0], np.diag(b))) == pytest.approx(14.0, abs=1e-12)


def test_singular_and_nearly_singular_covariances():
    # rank one, the same on both sides: distance 0, where sqrtm(S S) is ill-conditioned
    v = np.array([[1.0], [2.0], [-1.0]])
    s = v @ v.T
    assert frechet_distance(_stats([1, 1, 1], s), _stats([1, 1, 1], s)) == pytest.approx(0.0, abs=1e-12)
    # orthogonal supports: tr sqrt(S1 S2) = 0, so FD = tr S1 + tr S2 = 2
    assert frechet_distance(_stats([0, 0], np.diag([1.0, 0.0])), _stats([0, 0], np.diag([0.0, 1.0]))) == pytest.approx(2.0, abs=1e-12)
    # a direction with variance 1e-14 and a round-off negative eigenvalue do not give NaN
    near = np.diag([1.0, 1e-14, 0.0]) + np.diag([0, 0, -1e-17])
    assert frechet_distance(_stats([0, 0, 0], near), _stats([0, 0, 0], np.diag([4.0, 1e-14, 0.0]))) == pytest.approx(1.0, abs=1e-6)
    # fewer samples than dimensions: the same set is at distance 0
    x = np.random.default_rng(0).normal(size=(5, 20))
    assert frechet_distance(feature_stats(x), feature_stats(x)) == pytest.approx(0.0, abs=1e-9)


def test_psd_sqrt_and_trace_term():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4))
    s = a @ a.T
    root = psd_sqrt(s)
    np.testing.assert_allclose(root @ root, s, atol=1e-10)
    np.testing.assert_allclose(root, root.T, atol=0)
    assert trace_sqrt_product(s, s) == pytest.approx(np.trace(s), rel=1e-12)


def test_feature_stats_are_the_mean_and_unbiased_covariance():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [2.0, 7.0]])
    stats = feature_stats(x)
    np.testing.assert_allclose(stats.mean, [2.0, 3.0])
    # deviations (-1, -1), (1, -3), (0, 4): sum of outer products / (3 - 1)
    np.testing.assert_allclose(stats.cov, np.array([[2.0, -2.0], [-2.0, 26.0]]) / 2.0)
    assert stats.count == 3
    with pytest.raises(FidError, match="at least 2 feature vectors"):
        feature_stats(x[:1])
    with pytest.raises(FidError, match="1 feature values are NaN/Inf"):
        feature_stats(np.array([[1.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(FidError, match="feature dimensions differ: 2 and 3"):
        frechet_distance(stats, feature_stats(np.ones((3, 3)) + np.eye(3)))


def test_agrees_with_torch_fidelity_on_well_conditioned_statistics():
    metric_fid = require_module("torch_fidelity.metric_fid", "fid")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    ours = frechet_distance(feature_stats(a), feature_stats(b))
    theirs = metric_fid.fid_statistics_to_metric(
        metric_fid.fid_features_to_statistics(torch.from_numpy(a)), metric_fid.fid_features_to_statistics(torch.from_numpy(b)), False
    )[metric_fid.KEY_METRIC_FID]
    assert ours == pytest.approx(theirs, rel=1e-8)


def test_images_as_float_for_every_pixel_kind():
    grey = torch.tensor([[[0, 8], [16, 4]]])
    torch.testing.assert_close(images_as_float(grey, "categorical", 17, False), torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]]))
    maps = torch.tensor([[[2, 0]]])
    torch.testing.assert_close(images_as_float(maps, "categorical", 3, True), torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]], [[1.0, 0.0]]]]))
    x = torch.rand(2, 3, 4, 4)
    assert images_as_float(x, "continuous", 256, False) is not None and torch.equal(images_as_float(x, "continuous", 256, False), x)


# ----- the standard FID through torch-fidelity, from a local file ------------------------------
class NotTensors:
    """An arbitrary pickled object: what a weights file must never make us unpickle."""

@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A weights file with the FID Inception's exact keys and shapes (random values: the
    real file cannot be downloaded here)."""
    module = require_module("torch_fidelity.feature_extractor_inceptionv3", "fid")
    cls = module.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as patch:  # build the bare network: no weights, no download
        patch.setattr(cls, "load_state_dict", lambda self, state, strict=True: None)
        patch.setattr(module, "load_state_dict_from_url", lambda *args, **kwargs: {})
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_features_load_local_weights_safely(inception_weights, tmp_path, monkeypatch):
    from speechsq.eval.fid import InceptionFeatures

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    from speechsq.eval.fid import build_feature_space

    space = build_feature_space(inception_weights, None)
    assert isinstance(space, InceptionFeatures) and space.comparable_to_published_fid
    import hashlib

    assert space.describe()["weights_sha256"] == hashlib.sha256(inception_weights.read_bytes()).hexdigest()
    grey = torch.rand(2, 1, 16, 16)
    feats = space.features(grey)
    assert feats.shape == (2, 2048)
    # [0, 1] floats become the 8-bit images the FID network expects
    as_bytes = (grey * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    np.testing.assert_array_equal(feats, space.net(as_bytes)[0].double().numpy())
    np.testing.assert_allclose(feats, space.features(grey.expand(-1, 3, -1, -1)), rtol=0, atol=0)  # grey = RGB with equal channels
    with pytest.raises(FidError, match="label maps"):
        space.features(torch.rand(1, 19, 8, 8))

    torch.save({"a": NotTensors()}, tmp_path / "code.pth")
    with pytest.raises(FidError, match="is not a plain tensor state dict"):
        InceptionFeatures(tmp_path / "code.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(FidError, match="is not a state dict of the FID Inception-v3"):
        InceptionFeatures(tmp_path / "wrong.pth")
    with pytest.raises(FidError, match="no such Inception weights file"):
        InceptionFeatures(tmp_path / "missing.pth")


# ----- the offline classifier -------------------------------------------------------------------
def test_classifier_is_trained_once_cached_and_labelled(tmp_path):
    from speechsq.data.images import load_image_dataset
    from speechsq.eval.fd_classifier import ClassifierFeatures
    from speechsq.eval.fid import build_feature_space

    train = load_image_dataset("digits", "train", limit=200)
    valid = load_image_dataset("digits", "valid", limit=50)
    space = ClassifierFeatures.load_or_train(tmp_path / "clf", train, valid, steps=30)
    assert space.label == OFFLINE_LABEL == "FD (speechsq classifier, not comparable to published FID)"
    assert space.describe()["comparable_to_published_fid"] is False and "valid_accuracy" in space.describe()
    x = train.tensors(np.arange(8))["images"]
    feats = space.features(x)
    assert feats.shape == (8, 64)
    cached = build_feature_space(None, tmp_path / "clf", train, valid)  # loaded, not retrained
    np.testing.assert_array_equal(cached.features(x), feats)
    with pytest.raises(MismatchError, match="holds an FD classifier trained on"):
        ClassifierFeatures.load_or_train(tmp_path / "clf", load_image_dataset("digits", "train", limit=100), steps=30)
    unlabelled = load_image_dataset("digits", "train", limit=100)
    unlabelled.labels = None
    with pytest.raises(FidError, match="no class labels to train the offline FD classifier on"):
        ClassifierFeatures.load_or_train(tmp_path / "other", unlabelled, steps=30)
    with pytest.raises(FidError, match="give the Inception weights file"):
        build_feature_space(None, None)


def test_classifier_training_learns_the_digits_and_is_seeded():
    from speechsq.data.images import load_image_dataset
    from speechsq.eval.fd_classifier import FeatureNet, accuracy, train_classifier

    train = load_image_dataset("digits", "train", limit=200)
    net, info = train_classifier(train, steps=150)
    batch = train.tensors(np.arange(200))
    untrained = accuracy(FeatureNet(1, 10), batch["images"], batch["labels"])
    # ten classes: chance is 10 %; the features an FD is measured in must tell digits apart
    assert info["train_accuracy"] == accuracy(net, batch["images"], batch["labels"]) > untrained + 0.4
    first, _ = train_classifier(train, steps=10)
    again, _ = train_classifier(train, steps=10)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
