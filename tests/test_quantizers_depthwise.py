"""`depthwise` (DVQ, feature-axis groups) and `spatial` (SVQ, time/row segments)."""

import pytest
import torch

from speechsq.quantizers import QuantizerInputError, StepContext, build_quantizer
from speechsq.quantizers import functional as QF

K, D = 8, 6


def run_twice(q, z, mask=None):
    """Two training steps then one eval step: catches state (EMA, k-means) as well as outputs."""
    ctx = StepContext(temperature=0.7, kl_weight=0.5)
    outs = [q(z, mask, ctx), q(z, mask, ctx)]
    q.eval()
    outs.append(q(z, mask))
    q.train()
    return outs


@pytest.mark.parametrize("inner", ["vq", "vq_ema", "sq_gauss1", "sq_gauss2", "gumbel_vq", "dvae", "gmvq", "soft_vq"])
def test_one_group_is_exactly_the_inner_quantizer(inner):
    torch.manual_seed(7)
    plain = build_quantizer(inner, num_codes=K, code_dim=D)
    torch.manual_seed(7)
    wrapped = build_quantizer("depthwise", num_codes=K, code_dim=D, inner=inner, groups=1)
    assert wrapped.input_dim == plain.input_dim
    z = torch.randn(2, 9, plain.input_dim)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    torch.manual_seed(3)
    expected = run_twice(plain, z, mask)
    torch.manual_seed(3)
    got = run_twice(wrapped, z, mask)
    for a, b in zip(expected, got):
        assert torch.equal(a.z_q, b.z_q)
        assert torch.equal(a.indices, b.indices[..., 0])
        assert torch.equal(a.loss, b.loss)
        assert a.terms.keys() == b.terms.keys()
        for k, v in a.metrics.items():
            assert torch.equal(v, b.metrics[k]), k


def test_groups_quantize_disjoint_feature_slices_with_their_own_codebooks():
    q = build_quantizer("depthwise", num_codes=K, code_dim=D, inner="vq", groups=3).eval()
    assert [inner.code_dim for inner in q.quantizers] == [2, 2, 2]
    assert len({id(inner.codebook) for inner in q.quantizers}) == 3
    z = torch.randn(2, 5, D)
    out = q(z)
    assert out.indices.shape == (2, 5, 3)
    for g, inner in enumerate(q.quantizers):
        sl = z[..., 2 * g : 2 * g + 2]
        nearest = QF.squared_distances(sl.reshape(-1, 2), inner.codebook.detach()).argmin(-1)
        assert torch.equal(out.indices[..., g].reshape(-1), nearest)
        assert torch.equal(out.z_q[..., 2 * g : 2 * g + 2], inner.codebook.detach()[out.indices[..., g]])
    # the loss is the sum of the group losses (eq. 4)
    parts = [inner(z[..., 2 * g : 2 * g + 2]) for g, inner in enumerate(q.quantizers)]
    assert torch.allclose(out.loss, sum(p.loss for p in parts))


def test_input_dim_is_groups_times_inner_input_dim():
    assert build_quantizer("depthwise", num_codes=K, code_dim=D, inner="dvae", groups=2).input_dim == 2 * K
    assert build_quantizer("depthwise", num_codes=K, code_dim=D, inner="gmvq", groups=3).input_dim == 2 * D
    q = build_quantizer("depthwise", num_codes=K, code_dim=D, inner="dvae", groups=2)
    assert q(torch.randn(1, 4, 2 * K)).z_q.shape == (1, 4, D)


@pytest.mark.parametrize("inner", ["vq_ema", "gmvq", "edvae"])
@pytest.mark.parametrize("layout", ["sequence", "image"])
def test_indices_round_trip_with_group_axis(inner, layout):
    q = build_quantizer("depthwise", num_codes=K, code_dim=D, inner=inner, groups=2)
    if layout == "sequence":
        z = torch.randn(2, 7, q.input_dim)
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    else:
        z = torch.randn(2, q.input_dim, 3, 4)
        mask = torch.ones(2, 3, 4, dtype=torch.bool)
        mask[0, 2] = False
    q(z, mask)  # a training step first (EMA update, k-means init)
    q.eval()
    out = q(z, mask)
    idx = q.encode(z, mask)
    assert idx.shape[-1] == 2 and torch.equal(idx, out.indices)
    assert (idx[~mask] == -1).all() and (idx[mask] >= 0).all()
    assert torch.equal(q.decode(idx), out.z_q)


def test_per_group_perplexities_and_their_mean():
    q = build_quantizer("depthwise", num_codes=K, code_dim=D, inner="vq", groups=3).eval()
    out = q(torch.randn(4, 25, D))
    per_group = []
    for g in range(3):
        counts = torch.bincount(out.indices[..., g].reshape(-1), minlength=K).float()
        p = counts / counts.sum()
        expected = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
        assert torch.allclose(out.metrics[f"perplexity/g{g}"], expected)
        assert out.metrics[f"active_codes/g{g}"] == (counts > 0).sum()
        per_group.append(expected)
    assert torch.allclose(out.metrics["perplexity"], torch.stack(per_group).mean())


def test_bad_depthwise_options_give_clear_errors():
    with pytest.raises(QuantizerInputError, match="must divide code_dim"):
        build_quantizer("depthwise", num_codes=K, code_dim=D, groups=4)
    with pytest.raises(QuantizerInputError, match="positive integer"):
        build_quantizer("depthwise", num_codes=K, code_dim=D, groups=0)
    with pytest.raises(QuantizerInputError, match="unknown inner quantizer 'nope'.*vq_ema"):
        build_quantizer("depthwise", num_codes=K, code_dim=D, inner="nope")
    with pytest.raises(QuantizerInputError, match="cannot itself be a wrapper"):
        build_quantizer("depthwise", num_codes=K, code_dim=D, inner="spatial")
    with pytest.raises(QuantizerInputError, match="does not take option"):
        build_quantizer("depthwise", num_codes=K, code_dim=D, inner="vq", inner_options={"decay": 0.9})
    with pytest.raises(QuantizerInputError, match="unknown inner quantizer"):
        build_quantizer("spatial", num_codes=K, code_dim=D, inner="nope")
    q = build_quantizer("depthwise", num_codes=K, code_dim=D, groups=2)
    with pytest.raises(QuantizerInputError, match="G=2"):
        q.decode(torch.zeros(1, 4, 3, dtype=torch.long))
    with pytest.raises(QuantizerInputError, match="some groups but not"):
        q.decode(torch.tensor([[[0, -1]]]))


def test_inner_options_reach_every_group():
    q = build_quantizer("depthwise", num_codes=K, code_dim=D, inner="vq", groups=2, inner_options={"beta": 0.5})
    assert all(inner.beta == 0.5 for inner in q.quantizers)


# ----- spatial ----------------------------------------------------------------------------


def spatial_with_separated_codebooks(groups=2, inner="vq"):
    """Segment g's codebook holds only vectors near g * 100, so a code reveals its segment."""
    q = build_quantizer("spatial", num_codes=K, code_dim=D, inner=inner, groups=groups)
    with torch.no_grad():
        for g, inner_q in enumerate(q.quantizers):
            inner_q.codebook.copy_(100.0 * g + torch.randn(K, D))
    return q.eval()


def test_spatial_splits_time_and_each_segment_uses_its_own_codebook():
    q = spatial_with_separated_codebooks()
    assert q.input_dim == D and all(inner.code_dim == D for inner in q.quantizers)
    z = torch.randn(2, 10, D)  # close to segment 0's codebook everywhere
    out = q(z)
    assert out.indices.shape == (2, 10)
    assert (out.z_q[:, :5] < 50).all() and (out.z_q[:, 5:] > 50).all()
    for g, frames in enumerate((slice(0, 5), slice(5, 10))):
        book = q.quantizers[g].codebook.detach()
        nearest = QF.squared_distances(z[:, frames].reshape(-1, D), book).argmin(-1)
        assert torch.equal(out.indices[:, frames].reshape(-1), nearest)
        assert torch.equal(out.z_q[:, frames], book[out.indices[:, frames]])


def test_spatial_splits_image_rows_into_bands():
    q = spatial_with_separated_codebooks(groups=2)
    out = q(torch.randn(1, D, 4, 3))
    assert (out.z_q[:, :, :2] < 50).all() and (out.z_q[:, :, 2:] > 50).all()
    assert torch.equal(q.decode(out.indices), out.z_q)


def test_spatial_segments_follow_the_valid_frames_not_the_padding():
    q = spatial_with_separated_codebooks(groups=3)
    z = torch.randn(1, 9, D)
    alone = q(z)
    padded = torch.cat([z, torch.randn(1, 5, D)], 1)
    mask = torch.tensor([[True] * 9 + [False] * 5])
    batched = q(padded, mask)
    assert torch.equal(batched.indices[:, :9], alone.indices)
    assert torch.equal(batched.z_q[:, :9], alone.z_q)
    assert (batched.indices[:, 9:] == -1).all()
    assert torch.equal(q.decode(batched.indices), batched.z_q)


def test_spatial_round_trip_and_one_segment_equals_inner():
    q = build_quantizer("spatial", num_codes=K, code_dim=D, inner="vq_ema", groups=3)
    z = torch.randn(3, 11, D)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[2, 4:] = False
    q(z, mask)
    q.eval()
    assert torch.equal(q.decode(q.encode(z, mask)), q(z, mask).z_q)
    torch.manual_seed(5)
    plain = build_quantizer("gumbel_vq", num_codes=K, code_dim=D)
    torch.manual_seed(5)
    wrapped = build_quantizer("spatial", num_codes=K, code_dim=D, inner="gumbel_vq", groups=1)
    torch.manual_seed(1)
    a = plain(z, mask)
    torch.manual_seed(1)
    b = wrapped(z, mask)
    assert torch.equal(a.z_q, b.z_q) and torch.equal(a.indices, b.indices) and torch.equal(a.loss, b.loss)


def test_spatial_gradients_reach_every_segment_codebook():
    q = build_quantizer("spatial", num_codes=K, code_dim=D, inner="gumbel_vq", groups=2)
    z = torch.randn(2, 8, D, requires_grad=True)
    out = q(z)
    (out.z_q.sum() + out.loss).backward()
    assert all(inner.codebook.grad.abs().sum() > 0 for inner in q.quantizers)
    assert z.grad.abs().sum() > 0
    assert set(out.metrics) >= {"perplexity", "perplexity/s0", "perplexity/s1"}


def test_each_group_keeps_the_inner_per_example_structure():
    # sq_gauss2 pools its variance channel over an example's valid positions; wrapped in
    # depthwise, each group must do the same on its own slice (not fall back to one
    # variance per position), so each group equals the inner quantizer run on its slice.
    torch.manual_seed(1)
    q = build_quantizer("depthwise", num_codes=K, code_dim=D, inner="sq_gauss2", groups=2).eval()
    width = q.quantizers[0].input_dim
    z = torch.randn(3, 7, q.input_dim)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 4:] = False
    out = q(z, mask)
    alone = [inner(z[..., g * width : (g + 1) * width], mask) for g, inner in enumerate(q.quantizers)]
    for g, a in enumerate(alone):
        assert torch.equal(out.indices[..., g], a.indices)
        assert torch.equal(out.z_q[..., g * (D // 2) : (g + 1) * (D // 2)], a.z_q)
    # the variance (and so the regulariser) is the pooled one, not one per position
    assert torch.allclose(out.metrics["sigma2_phi"], torch.stack([a.metrics["sigma2_phi"] for a in alone]).mean())
    assert torch.allclose(out.loss, sum(a.loss for a in alone))
