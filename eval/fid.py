"""Fréchet distances between image sets (FID, Heusel et al. 2017), standard or offline.

FD(a, b) = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})

between Gaussians fitted to the features of two image sets (mean and the unbiased
covariance, as TTUR's reference ``fid.py`` and torch-fidelity). The trace term is computed
as tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}): S_a S_b is similar to that symmetric PSD matrix, so
both have the same eigenvalues, and a symmetric eigendecomposition gives them stably even
when the covariances are singular (fewer images than feature dimensions, dead features),
where the usual ``scipy.linalg.sqrtm(S_a @ S_b)`` returns complex noise and needs an
``eps`` offset. Eigenvalues that round-off makes slightly negative are set to 0.

Two feature spaces (:func:`build_feature_space` picks one):

* ``inception``: the standard FID, the 2048 pool3 features of the TensorFlow FID
  Inception-v3 (2015-12-05) through torch-fidelity (the ``fid`` extra), read from a local
  weights file (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``): nothing is
  downloaded. The file is read with ``torch.load(weights_only=True)`` (tensors only, no
  unpickling of code) and must be a state dict of exactly that network.
* ``classifier``: offline, the pooled features of a small CNN that speechsq trains on the
  dataset's training split (:mod:`speechsq.eval.fd_classifier`). Every output labels it
  "FD (speechsq classifier, not comparable to published FID)".
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

OFFLINE_LABEL = "FD (speechsq classifier, not comparable to published FID)"
INCEPTION_LABEL = "FID (Inception-v3 pool3, torch-fidelity)"
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"


class FidError(SpeechsqError, ValueError):
    """Feature sets, weights files or images the Fréchet distance cannot be computed from."""


# ----- the distance -------------------------------------------------------------------------
@dataclass(frozen=True)
class GaussianStats:
    """Mean (F,) and unbiased covariance (F, F) of ``count`` feature vectors (float64)."""

    mean: np.ndarray
    cov: np.ndarray
    count: int


def feature_stats(features: np.ndarray | Tensor) -> GaussianStats:
    """Fit the Gaussian of a set of (N, F) feature vectors (N >= 2)."""
    x = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    if x.ndim != 2:
        raise FidError(f"features must be (N, F), got shape {x.shape}")
    if x.shape[0] < 2:
        raise FidError(f"a covariance needs at least 2 feature vectors, got {x.shape[0]}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise FidError(f"{int((~np.isfinite(x)).sum())} feature values are NaN/Inf (images with NaNs?)")
    mean = x.mean(0)
    centred = x - mean
    return GaussianStats(mean, centred.T @ centred / (x.shape[0] - 1), int(x.shape[0]))


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric PSD matrix (eigenvalues < 0 from
    round-off are set to 0)."""
    sym = (matrix + matrix.T) / 2.0
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((S_a S_b)^{1/2}) = sum of sqrt(eig(S_a^{1/2} S_b S_a^{1/2}))."""
    root_a = psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    values = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Fréchet distance between two Gaussians (see the module docstring)."""
    if a.mean.shape != b.mean.shape or a.cov.shape != b.cov.shape:
        raise FidError(f"feature dimensions differ: {a.mean.shape[0]} and {b.mean.shape[0]}")
    diff = a.mean - b.mean
    value = float(diff @ diff) + float(np.trace(a.cov)) + float(np.trace(b.cov)) - 2.0 * trace_sqrt_product(a.cov, b.cov)
    return max(value, 0.0)  # a distance: only round-off can take it below 0


# ----- images -> features -------------------------------------------------------------------
class FeatureSpace(Protocol):
    """What a Fréchet distance is measured in."""

    name: str
    label: str  # how every output names the number
    comparable_to_published_fid: bool

    def features(self, images: Tensor) -> np.ndarray:
        """(B, C, H, W) floats in [0, 1] -> (B, F)."""
        ...

    def describe(self) -> dict: ...


def images_as_float(images: Tensor, kind: str, num_values: int, label_map: bool) -> Tensor:
    """Model outputs / data of any pixel kind -> (B, C, H, W) floats in [0, 1]: continuous
    images as they are, grey-level ids as level / (levels - 1), label maps one-hot."""
    if kind == "continuous":
        return images.float()
    ids = images.long()
    if label_map:
        return torch.nn.functional.one_hot(ids, num_values).permute(0, 3, 1, 2).float()
    return (ids.float() / float(num_values - 1))[:, None]


class InceptionFeatures:
    """Standard FID features (see the module docstring); ``weights``: the local weights file."""

    name = "inception"
    label = INCEPTION_LABEL
    comparable_to_published_fid = True

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu"):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise FidError("the standard FID needs torch-fidelity: pip install 'speechsq[fid]'") from None
        self.weights = Path(weights)
        self.device = torch.device(device)
        state = load_weights_file(self.weights)
        self.weights_sha256 = hashlib.sha256(self.weights.read_bytes()).hexdigest()
        # torch-fidelity reads a weights path with a full unpickler; hand it a copy of the
        # tensors we have read safely instead of the user's file.
        with tempfile.TemporaryDirectory() as tmp:
            safe = Path(tmp) / INCEPTION_WEIGHTS_NAME
            torch.save(state, safe)
            try:
                net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(safe))
            except RuntimeError as err:
                raise FidError(
                    f"{self.weights} is not a state dict of the FID Inception-v3 (torch-fidelity's {INCEPTION_WEIGHTS_NAME}): "
                    f"{str(err).splitlines()[0]}"
                ) from None
        self.net = net.to(self.device).eval()

    def features(self, images: Tensor) -> np.ndarray:
        if images.shape[1] not in (1, 3):
            raise FidError(f"Inception FID needs grey or RGB images, got {images.shape[1]} channels (label maps: use the classifier FD)")
        x = (images.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        (pool3,) = self.net(x.to(self.device))
        return pool3.double().cpu().numpy()

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "comparable_to_published_fid": True,
                "weights": str(self.weights), "weights_sha256": self.weights_sha256}  # fmt: skip


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict of tensors from a local file, without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FidError(f"{path}: no such Inception weights file (torch-fidelity's {INCEPTION_WEIGHTS_NAME})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable or unsafe file is the same user error
        raise FidError(f"{path} is not a plain tensor state dict ({str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise FidError(f"{path} is not a state dict of tensors")
    return state


def build_feature_space(
    inception_weights: str | Path | None,
    classifier_dir: str | Path | None,
    train_split=None,
    valid_split=None,
    device: str = "cpu",
    classifier_steps: int = 600,
) -> FeatureSpace:
    """The standard FID when ``inception_weights`` is given, else the offline classifier FD
    (trained on ``train_split`` into ``classifier_dir`` the first time)."""
    if inception_weights:
        return InceptionFeatures(inception_weights, device)
    if classifier_dir is None:
        raise FidError("give the Inception weights file (standard FID) or a directory for the offline FD classifier")
    from speechsq.eval.fd_classifier import ClassifierFeatures

    return ClassifierFeatures.load_or_train(classifier_dir, train_split, valid_split, device=device, steps=classifier_steps)
