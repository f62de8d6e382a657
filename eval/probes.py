"""Representation probes (soft VQ-VAE paper, Wu & Flierl, "Representation learning tasks").

* k-means clustering accuracy: k-means (best of ``n_init`` random initialisations) on the
  latents, clusters matched one-to-one to classes with the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment`` on the contingency table), accuracy of the
  matched labelling;
* NMI = 2 I(y, y_hat) / (H(y) + H(y_hat)) (sklearn's arithmetic normalisation);
* a single-layer classifier (one linear layer + softmax, i.e. multinomial logistic
  regression) trained on training latents, accuracy on test latents.

For speech: a frame-level phone probe (phone labels from alignments, sampled at the
latent frame centres) and a speaker probe (how much speaker identity the representation
keeps), both linear, split by utterance so that no utterance is in both halves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class ClusteringResult:
    accuracy: float  # percent, Hungarian-matched
    nmi: float
    n_clusters: int
    n_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def _encode_labels(labels) -> np.ndarray:
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.ravel()


def hungarian_accuracy(pred, labels) -> float:
    """Best one-to-one matching of predicted clusters to classes; accuracy in percent.

    Works for any number of clusters and classes (unmatched clusters count as errors).
    """
    pred, labels = _encode_labels(pred), _encode_labels(labels)
    if pred.shape != labels.shape or pred.size == 0:
        raise ValueError(f"need equally many (>0) predictions and labels, got {pred.size} and {labels.size}")
    table = np.zeros((pred.max() + 1, labels.max() + 1), dtype=np.int64)
    np.add.at(table, (pred, labels), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return 100.0 * table[rows, cols].sum() / pred.size


def nmi(pred, labels) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(_encode_labels(labels), _encode_labels(pred), average_method="arithmetic"))


def kmeans_probe(features: np.ndarray, labels, n_clusters: int | None = None, n_init: int = 100, seed: int = 0) -> ClusteringResult:
    """k-means (best inertia of ``n_init`` random starts, as the paper's 100) + Hungarian accuracy + NMI."""
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (N, D) with N = len(labels), got {features.shape} and {labels.shape}")
    k = int(n_clusters or len(np.unique(labels)))
    pred = KMeans(n_clusters=k, n_init=n_init, init="random", random_state=seed).fit_predict(features)
    return ClusteringResult(hungarian_accuracy(pred, labels), nmi(pred, labels), k, len(labels))


class LinearProbe:
    """Single linear layer + softmax (multinomial logistic regression) on standardised inputs.

    Features are standardised with the training statistics first (the layer's own affine map
    could absorb it, but the optimiser converges far faster).
    """

    def __init__(self, train_x, train_y, max_iter: int = 1000, seed: int = 0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        train_x = np.asarray(train_x, np.float64)
        if len(np.unique(train_y)) < 2:
            raise ValueError("a linear probe needs at least two classes in the training data")
        self.scaler = StandardScaler().fit(train_x)
        self.classifier = LogisticRegression(max_iter=max_iter, random_state=seed)
        self.classifier.fit(self.scaler.transform(train_x), np.asarray(train_y))

    @property
    def classes(self) -> np.ndarray:
        return self.classifier.classes_

    def predict(self, x) -> np.ndarray:
        return self.classifier.predict(self.scaler.transform(np.asarray(x, np.float64)))

    def log_proba(self, x) -> np.ndarray:
        """(N, classes) log-probabilities, columns in the order of :attr:`classes`."""
        return self.classifier.predict_log_proba(self.scaler.transform(np.asarray(x, np.float64)))


def linear_probe(train_x, train_y, test_x, test_y, max_iter: int = 1000, seed: int = 0) -> float:
    """:class:`LinearProbe` trained on ``train``; accuracy on ``test`` in percent."""
    probe = LinearProbe(train_x, train_y, max_iter, seed)
    return 100.0 * float((probe.predict(test_x) == np.asarray(test_y)).mean())


# ----------------------------------------------------------------------------- speech


def frame_labels(segments, n_frames: int, frame_shift: float, frame_offset: float = 0.0) -> np.ndarray:
    """Label of each frame = the segment containing its centre ``offset + (k + 0.5) * shift``
    (``None`` where no segment covers it). segments: objects with onset, offset, phone."""
    centres = frame_offset + (np.arange(n_frames) + 0.5) * frame_shift
    out = np.full(n_frames, None, dtype=object)
    for seg in segments:
        out[(centres >= seg.onset) & (centres < seg.offset)] = seg.phone
    return out


def split_utterances(utterances: list[str], groups: Mapping[str, str] | None = None, test_fraction: float = 0.2, seed: int = 0):
    """Utterance-level train/test split; with ``groups`` (utt -> speaker) every group is split
    on its own, so each speaker appears on both sides (needed by the speaker probe)."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[str]] = {}
    for utt in sorted(utterances):
        by_group.setdefault(groups[utt] if groups else "", []).append(utt)
    train, test = [], []
    for members in by_group.values():
        members = list(rng.permutation(members))
        n_test = max(1, int(round(test_fraction * len(members)))) if len(members) > 1 else 0
        test += members[:n_test]
        train += members[n_test:]
    return sorted(train), sorted(test)


@dataclass
class SpeechProbeResult:
    phone_accuracy: float | None  # percent, frame level
    speaker_accuracy: float | None  # percent, frame level
    n_train_frames: int
    n_test_frames: int
    n_phones: int
    n_speakers: int

    def to_dict(self) -> dict:
        return asdict(self)


def speech_probes(
    features: Mapping[str, np.ndarray],
    utt2spk: Mapping[str, str],
    alignments: Mapping[str, list] | None,
    frame_shift: float,
    test_fraction: float = 0.2,
    max_frames: int = 50000,
    seed: int = 0,
) -> SpeechProbeResult:
    """Linear phone and speaker probes on frame-level features ``utt -> (T', D)``.

    frame_shift: seconds per row of ``features`` (0.02 for the latents of a 10 ms model).
    """
    utts = sorted(u for u in features if u in utt2spk)
    if len(utts) < 2:
        raise ValueError("need at least two utterances with a speaker for the probes")
    train_utts, test_utts = split_utterances(utts, utt2spk, test_fraction, seed)
    rng = np.random.default_rng(seed)

    def collect(names, with_phones):
        xs, spk, ph = [], [], []
        for utt in names:
            x = np.asarray(features[utt], dtype=np.float64)
            if x.ndim == 1:
                x = x[:, None]
            labels = frame_labels(alignments[utt], len(x), frame_shift) if with_phones and utt in alignments else None
            xs.append(x)
            spk += [utt2spk[utt]] * len(x)
            ph += list(labels) if labels is not None else [None] * len(x)
        x = np.concatenate(xs)
        keep = rng.permutation(len(x))[:max_frames]
        return x[keep], np.asarray(spk, dtype=object)[keep], np.asarray(ph, dtype=object)[keep]

    with_phones = alignments is not None
    tr_x, tr_s, tr_p = collect(train_utts, with_phones)
    te_x, te_s, te_p = collect(test_utts, with_phones)
    speaker_acc = linear_probe(tr_x, tr_s, te_x, te_s, seed=seed) if len(set(tr_s)) > 1 else None
    phone_acc = None
    n_phones = 0
    if with_phones:
        tr_ok = np.array([p is not None for p in tr_p])
        te_ok = np.array([p is not None and p in set(tr_p[tr_ok]) for p in te_p])
        n_phones = len(set(tr_p[tr_ok]))
        if n_phones > 1 and te_ok.any():
            phone_acc = linear_probe(tr_x[tr_ok], tr_p[tr_ok].astype(str), te_x[te_ok], te_p[te_ok].astype(str), seed=seed)
    return SpeechProbeResult(phone_acc, speaker_acc, len(tr_x), len(te_x), n_phones, len(set(tr_s)))
