"""The quantizer contract, checked for every registered quantizer (see docs/ARCHITECTURE.md §3).

Parametrised over ``list_quantizers()``, so a newly registered quantizer is covered
without editing this file. ``identity`` has no codebook and is skipped where a codebook is
the point. Widths come from ``q.input_dim``; grouped quantizers (``depthwise``: indices
with a trailing group axis) go through the same checks.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from speechsq.quantizers import QuantizerInputError, StepContext, build_quantizer, list_quantizers

K, D = 16, 8
NAMES = [n for n in list_quantizers() if n != "identity"]


def make(name: str):
    torch.manual_seed(1)
    return build_quantizer(name, num_codes=K, code_dim=D)


def seq_latent(q, b=3, t=7, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, q.input_dim, generator=g)


def img_latent(q, b=2, h=3, w=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, q.input_dim, h, w, generator=g)


def positions_ndim(z):
    return 2 if z.ndim == 3 else 3


def assert_same_output(a, b, exact=True):
    check = torch.equal if exact else (lambda x, y: torch.allclose(x, y, rtol=1e-5, atol=1e-6))
    assert torch.equal(a.indices, b.indices)
    assert check(a.z_q, b.z_q)
    assert check(a.loss, b.loss)
    assert a.terms.keys() == b.terms.keys() and a.metrics.keys() == b.metrics.keys()
    for key in a.terms:
        assert check(a.terms[key], b.terms[key]), key
    for key in a.metrics:
        assert check(a.metrics[key], b.metrics[key]), key


# --------------------------------------------------------------------------------------
# indices -> codes round trip
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["sequence", "image"])
@pytest.mark.parametrize("name", NAMES)
def test_decode_of_encode_equals_eval_forward_bit_for_bit(name, layout):
    q = make(name)
    z = seq_latent(q) if layout == "sequence" else img_latent(q)
    # one training step first, so that EMA / k-means / learned state is not at its init
    q.train()
    q(z, None, StepContext(temperature=0.5))
    q.eval()
    out = q(z)
    indices = q.encode(z)
    assert torch.equal(indices, out.indices)
    assert indices.dtype == torch.long
    assert (indices >= 0).all() and (indices < K).all()
    decoded = q.decode(indices)
    assert decoded.shape == out.z_q.shape
    assert torch.equal(decoded, out.z_q)


@pytest.mark.parametrize("name", NAMES)
def test_encode_in_training_mode_is_the_eval_argmax_and_changes_no_state(name):
    # encode() is deterministic even when called on a module left in training mode: no
    # Gumbel/posterior sample, no EMA or k-means update, and the mode is restored afterwards
    q = make(name).train()
    z = seq_latent(q, b=4, t=25)
    state = copy.deepcopy(q.state_dict())
    indices = q.encode(z)
    assert q.training
    for key, value in q.state_dict().items():
        assert torch.equal(value, state[key]), f"encode() changed {key!r}"
    assert torch.equal(indices, q.eval()(z).indices)


@pytest.mark.parametrize("name", NAMES)
def test_decode_rejects_indices_outside_the_codebook(name):
    q = make(name).eval()
    groups = (q.num_groups,) if q.num_groups > 1 else ()
    for bad in (K, K + 3, -2):
        indices = torch.zeros(1, 4, *groups, dtype=torch.long)
        indices[0, 2] = bad
        with pytest.raises(QuantizerInputError, match=rf"indices must lie in \[0, {K}\)"):
            q.decode(indices)
    last = torch.full((1, 4, *groups), K - 1, dtype=torch.long)  # the last code is valid
    assert q.decode(last).shape[0] == 1


@pytest.mark.parametrize("name", NAMES)
def test_masked_positions_decode_to_zero_and_index_minus_one(name):
    q = make(name).eval()
    z = seq_latent(q)
    mask = torch.ones(z.shape[:2], dtype=torch.bool)
    mask[0, 4:] = False
    out = q(z, mask)
    assert (out.indices[0, 4:] == -1).all()
    assert torch.equal(out.z_q[0, 4:], torch.zeros_like(out.z_q[0, 4:]))
    assert torch.equal(q.decode(out.indices), out.z_q)


# --------------------------------------------------------------------------------------
# masking: padded frames change nothing
# --------------------------------------------------------------------------------------
def _garbage_pair(q, seed=5):
    """The same latent twice, with different (large, finite) garbage in the padded frames."""
    z = seq_latent(q, b=3, t=9)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[2, 3:] = False
    g = torch.Generator().manual_seed(seed)
    z_a, z_b = z.clone(), z.clone()
    z_a[~mask] = 50.0 * torch.randn(int((~mask).sum()), q.input_dim, generator=g)
    z_b[~mask] = -30.0 * torch.rand(int((~mask).sum()), q.input_dim, generator=g)
    return z_a, z_b, mask


def _run(q, z, mask, training: bool, seed: int = 11):
    q.train(training)
    torch.manual_seed(seed)  # stochastic quantizers draw the same noise for the same valid rows
    return q(z, mask, StepContext(temperature=0.7))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", NAMES)
def test_garbage_in_padded_frames_changes_nothing(name, training):
    base = make(name)
    z_a, z_b, mask = _garbage_pair(base)
    q_a, q_b = copy.deepcopy(base), copy.deepcopy(base)
    out_a = _run(q_a, z_a, mask, training)
    out_b = _run(q_b, z_b, mask, training)
    assert torch.equal(out_a.indices, out_b.indices)
    assert torch.equal(out_a.z_q[mask], out_b.z_q[mask])
    assert_same_output(out_a, out_b)
    # codebook / EMA / usage state after a training step is unaffected by the garbage
    for (key, va), (_, vb) in zip(q_a.state_dict().items(), q_b.state_dict().items()):
        assert torch.equal(va, vb), f"state {key!r} depends on padded frames"


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_equals_batch_without_padding(name, training):
    base = make(name)
    z = seq_latent(base, b=1, t=10)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, :6] = True
    padded = z.clone()
    padded[0, 6:] = 7.0
    q_pad, q_cut = copy.deepcopy(base), copy.deepcopy(base)
    out_pad = _run(q_pad, padded, mask, training)
    out_cut = _run(q_cut, z[:, :6], None, training)
    assert torch.equal(out_pad.indices[:, :6], out_cut.indices)
    # the same rows meet the same arithmetic; allow float reassociation in reductions
    assert_same_output(
        type(out_cut)(out_pad.z_q[:, :6], out_pad.indices[:, :6], out_pad.loss, out_pad.terms, out_pad.metrics),
        out_cut,
        exact=False,
    )
    for (key, va), (_, vb) in zip(q_pad.state_dict().items(), q_cut.state_dict().items()):
        assert torch.allclose(va.float(), vb.float(), rtol=1e-5, atol=1e-6), f"state {key!r} differs"


@pytest.mark.parametrize("name", NAMES)
def test_image_mask_excludes_positions(name):
    q = make(name).eval()
    z = img_latent(q)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[1, 2, :] = False
    other = z.clone()
    other[1, :, 2, :] = 99.0
    a, b = q(z, mask), q(other, mask)
    assert_same_output(a, b)
    assert (a.indices[1, 2] == -1).all()


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_perplexity_is_exp_entropy_of_code_histogram(name):
    q = make(name)
    if q.num_groups > 1 or getattr(q, "num_segments", 1) > 1:
        # several codebooks: the wrapper reports the mean over codebooks; with one group it
        # must reduce to the plain definition
        torch.manual_seed(1)
        q = build_quantizer(name, num_codes=K, code_dim=D, groups=1)
    q.eval()
    z = seq_latent(q, b=4, t=25)
    mask = torch.ones(4, 25, dtype=torch.bool)
    mask[3, 10:] = False
    out = q(z, mask)
    indices = out.indices if out.indices.ndim == positions_ndim(z) else out.indices.squeeze(-1)
    codes = indices[mask].numpy()
    hist = np.bincount(codes, minlength=K).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    expected = math.exp(-(p * np.log(p)).sum())
    assert out.metrics["perplexity"].item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["active_codes"].item() == len(np.unique(codes))
    for value in out.metrics.values():
        assert value.ndim == 0 and torch.isfinite(value) and not value.requires_grad


def test_base_soft_metrics_of_a_subclass_that_only_returns_probs():
    # the base computes entropy and soft perplexity for a subclass that gives its posterior
    from speechsq.quantizers.base import FlatQuantized, Quantizer

    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])

    class Fixed(Quantizer):
        def quantize_flat(self, rows, ctx):
            return FlatQuantized(z_q=rows, indices=torch.tensor([0, 0, 3]), probs=probs)

    out = Fixed(num_codes=4, code_dim=2)(torch.zeros(1, 3, 2))
    # row entropies log 2, 0, log 4 -> mean log(2); average posterior [7, 3, 1, 1] / 12
    assert out.metrics["entropy"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    avg = np.array([7.0, 3.0, 1.0, 1.0]) / 12
    assert out.metrics["soft_perplexity"].item() == pytest.approx(math.exp(-(avg * np.log(avg)).sum()), rel=1e-6)
    assert out.metrics["perplexity"].item() == pytest.approx(math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))), rel=1e-6)
    assert out.metrics["active_codes"].item() == 2


@pytest.mark.parametrize("name", NAMES)
def test_loss_equals_sum_of_terms(name):
    q = make(name).train()
    out = q(seq_latent(q), None, StepContext(temperature=0.5))
    assert torch.allclose(out.loss, sum(out.terms.values(), torch.zeros(())))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_wrong_latent_width_is_a_clear_error(name):
    q = make(name)
    with pytest.raises(QuantizerInputError, match=rf"expects {q.input_dim} latent channels"):
        q(torch.randn(2, 5, q.input_dim + 1))
    with pytest.raises(QuantizerInputError, match=rf"expects {q.input_dim} latent channels"):
        q(torch.randn(2, q.input_dim + 3, 2, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_latent_is_a_clear_error(name, bad):
    q = make(name)
    z = seq_latent(q)
    z[1, 2, 0] = bad
    with pytest.raises(QuantizerInputError, match="NaN/Inf"):
        q(z)


@pytest.mark.parametrize("name", NAMES)
def test_codebook_of_one_code_is_rejected(name):
    with pytest.raises(QuantizerInputError, match="num_codes must be >= 2"):
        build_quantizer(name, num_codes=1, code_dim=D)


@pytest.mark.parametrize("name", NAMES)
def test_mask_of_wrong_shape_is_a_clear_error(name):
    q = make(name)
    z = seq_latent(q, b=3, t=7)
    with pytest.raises(QuantizerInputError, match=r"mask must have shape \(3, 7\)"):
        q(z, torch.ones(3, 6, dtype=torch.bool))
    with pytest.raises(QuantizerInputError, match=r"mask must have shape \(3, 7\)"):
        q(z, torch.ones(7, 3, dtype=torch.bool))


def test_unknown_name_lists_the_known_quantizers():
    with pytest.raises(QuantizerInputError, match="unknown quantizer 'sq_gauss9'") as info:
        build_quantizer("sq_gauss9", num_codes=K, code_dim=D)
    for known in ("vq", "vq_ema", "sq_gauss1", "sq_vmf"):
        assert known in str(info.value)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(QuantizerInputError, match="does not take option"):
        build_quantizer("vq_ema", num_codes=K, code_dim=D, decya=0.9)


def test_every_named_quantizer_of_the_issue_is_registered():
    wanted = {"vq", "vq_ema", "vq_ema_reset", "sq_gauss1", "sq_gauss2", "sq_gauss3", "sq_gauss4", "sq_fixed", "sq_vmf"}
    assert wanted <= set(list_quantizers())
