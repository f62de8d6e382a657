"""Probes: Hungarian-matched clustering accuracy, NMI, linear classifier, speech probes."""

from __future__ import annotations

import numpy as np
import pytest

from speechsq.data_prep.alignments import PhoneSegment
from speechsq.eval.probes import (
    frame_labels,
    hungarian_accuracy,
    kmeans_probe,
    linear_probe,
    nmi,
    speech_probes,
    split_utterances,
)


def test_hungarian_accuracy_is_invariant_to_relabelling():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    permuted = np.array([2, 0, 1])[labels]  # cluster ids are arbitrary names
    assert hungarian_accuracy(permuted, labels) == 100.0
    assert nmi(permuted, labels) == pytest.approx(1.0)
    # one mistake out of 7 after the best matching
    pred = permuted.copy()
    pred[0] = 0
    assert hungarian_accuracy(pred, labels) == pytest.approx(100 * 6 / 7)


def test_hungarian_accuracy_one_to_one_and_string_labels():
    # two clusters cannot both be matched to class "a": the 1-to-1 constraint matters
    labels = np.array(["a", "a", "a", "b"])
    pred = np.array([0, 0, 1, 1])
    assert hungarian_accuracy(pred, labels) == pytest.approx(75.0)
    # more clusters than classes: unmatched clusters count as errors
    assert hungarian_accuracy(np.array([0, 1, 2, 3]), labels) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="equally many"):
        hungarian_accuracy(np.array([0, 1]), labels)


def test_nmi_matches_its_definition():
    y = np.array([0, 0, 1, 1, 1, 2])
    y_hat = np.array([1, 1, 0, 0, 2, 2])

    def entropy(v):
        _, c = np.unique(v, return_counts=True)
        p = c / c.sum()
        return -(p * np.log(p)).sum()

    joint = entropy([f"{a}-{b}" for a, b in zip(y, y_hat)])
    mutual = entropy(y) + entropy(y_hat) - joint
    assert nmi(y_hat, y) == pytest.approx(2 * mutual / (entropy(y) + entropy(y_hat)))


def test_kmeans_probe_on_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    labels = np.repeat([2, 0, 1], 30)
    x = centres[np.repeat([0, 1, 2], 30)] + rng.normal(size=(90, 2))
    result = kmeans_probe(x, labels, n_init=5)
    assert result.accuracy == 100.0 and result.nmi == pytest.approx(1.0) and result.n_clusters == 3


def test_linear_probe_separable_and_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    x = x[np.abs(x[:, 0] + x[:, 1]) > 0.5][:200]  # linearly separable with a margin
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    assert linear_probe(x[:150], y[:150], x[150:], y[150:]) == 100.0
    # every point appears once with each label: any classifier gets exactly half of them
    twins = np.repeat(rng.normal(size=(50, 3)), 2, axis=0)
    labels = np.tile([0, 1], 50)
    assert linear_probe(twins[:60], labels[:60], twins[60:], labels[60:]) == 50.0
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(x, np.zeros(200), x, np.zeros(200))


def test_frame_labels_use_frame_centres():
    segs = [PhoneSegment(0.0, 0.05, "a"), PhoneSegment(0.05, 0.09, "b")]
    labels = frame_labels(segs, n_frames=5, frame_shift=0.02)  # centres 0.01 .. 0.09
    assert labels.tolist() == ["a", "a", "b", "b", None]


def test_split_keeps_every_speaker_on_both_sides():
    utts = [f"s{s}_{k}" for s in range(3) for k in range(5)]
    train, test = split_utterances(utts, {u: u[:2] for u in utts}, test_fraction=0.2)
    assert not set(train) & set(test) and len(train) + len(test) == 15
    assert {u[:2] for u in test} == {u[:2] for u in train} == {"s0", "s1", "s2"}
    # at least one test utterance per speaker with two or more (round(0.2 * 2) = 0), none from a single one
    train, test = split_utterances(["a_1", "a_2", "b_1"], {"a_1": "a", "a_2": "a", "b_1": "b"}, test_fraction=0.2)
    assert (len(train), len(test), train[-1]) == (2, 1, "b_1") and test[0] in ("a_1", "a_2")


def test_speech_probes_find_phone_and_speaker_information():
    rng = np.random.default_rng(2)
    phones = ["a", "b", "c"]
    proto = {p: rng.normal(size=4) * 4 for p in phones}
    speaker_dir = {"s1": np.array([3.0, 0, 0, 0, 0]), "s2": np.array([-3.0, 0, 0, 0, 0])}
    feats, utt2spk, ali = {}, {}, {}
    for s in ("s1", "s2"):
        for k in range(6):
            utt = f"{s}_{k}"
            seq = rng.choice(phones, size=8)
            segs, rows = [], []
            for i, p in enumerate(seq):  # each phone 3 latent frames of 20 ms
                segs.append(PhoneSegment(i * 0.06, (i + 1) * 0.06, p))
                for _ in range(3):
                    rows.append(np.concatenate([proto[p], [0.0]]) + speaker_dir[s] + 0.3 * rng.normal(size=5))
            feats[utt], utt2spk[utt], ali[utt] = np.array(rows), s, segs
    result = speech_probes(feats, utt2spk, ali, frame_shift=0.02)
    # prototypes 4 sigma apart, speakers 6 apart, noise 0.3: both are linearly separable
    assert (result.phone_accuracy, result.speaker_accuracy) == (100.0, 100.0)
    # 12 utterances of 24 frames, one test utterance per speaker (round(0.2 * 6) = 1)
    assert (result.n_train_frames, result.n_test_frames, result.n_phones, result.n_speakers) == (240, 48, 3, 2)
    # a phone only the test utterances have cannot be predicted: its frames are not scored
    _, test_utts = split_utterances(sorted(feats), utt2spk, 0.2, 0)
    unseen = {utt: segs[:-1] + [PhoneSegment(segs[-1].onset, segs[-1].offset, "z")] if utt in test_utts else segs
              for utt, segs in ali.items()}
    result = speech_probes(feats, utt2spk, unseen, frame_shift=0.02)
    assert (result.phone_accuracy, result.n_phones, result.n_test_frames) == (100.0, 3, 48)
    # the same features for every utterance: no speaker information, and each speaker has one
    # test utterance of 24 frames, so the (constant) prediction is right for exactly half
    same = {utt: feats["s1_0"] for utt in feats}
    blind = speech_probes(same, utt2spk, None, frame_shift=0.02)
    assert blind.phone_accuracy is None and blind.speaker_accuracy == 50.0
