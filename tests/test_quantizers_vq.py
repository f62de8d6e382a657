"""`vq`, `vq_ema`, `vq_ema_reset`: nearest codes, loss closed forms, EMA and code-reset rules."""

from __future__ import annotations

import pytest
import torch

from speechsq.quantizers import QuantizerInputError, build_quantizer
from speechsq.quantizers.init import kmeans_init_

D = 4


def blobs(centres: torch.Tensor, per_blob: int, spread: float = 0.05, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = centres.repeat_interleave(per_blob, 0)
    return rows + spread * torch.randn(rows.shape, generator=g)


# --------------------------------------------------------------------------------------
# vq
# --------------------------------------------------------------------------------------
def test_vq_picks_the_nearest_code_and_loss_is_eq4():
    q = build_quantizer("vq", num_codes=8, code_dim=D).train()
    z = torch.randn(2, 5, D, requires_grad=True)
    out = q(z)
    rows = z.detach().reshape(-1, D)
    nearest = torch.cdist(rows, q.codebook.detach()).argmin(-1)
    assert torch.equal(out.indices.reshape(-1), nearest)
    codes = q.codebook.detach()[nearest]
    sq = (rows - codes).pow(2).sum() / 2  # per example: B = 2
    assert torch.allclose(out.terms["codebook"], sq)
    assert torch.allclose(out.terms["commitment"], 0.25 * sq)
    # straight-through: the decoder input equals the codes, its gradient is passed to z unchanged
    assert torch.allclose(out.z_q.detach().reshape(-1, D), codes)
    upstream = torch.randn_like(out.z_q)
    (out.z_q * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)
    assert q.codebook.grad is None or torch.count_nonzero(q.codebook.grad) == 0


def test_vq_codebook_gradient_comes_from_the_codebook_term_only_for_used_codes():
    q = build_quantizer("vq", num_codes=8, code_dim=D).train()
    z = torch.randn(1, 6, D)
    out = q(z)
    out.loss.backward()
    used = torch.unique(out.indices)
    grad = q.codebook.grad
    unused = torch.ones(8, dtype=torch.bool)
    unused[used] = False
    assert torch.count_nonzero(grad[unused]) == 0
    # d/db_k sum_{n: k(n)=k} ||z_n - b_k||^2 = 2 sum (b_k - z_n)
    rows = z.reshape(-1, D)
    expected = torch.zeros(8, D).index_add_(0, out.indices.reshape(-1), 2 * (q.codebook.detach()[out.indices.reshape(-1)] - rows))
    assert torch.allclose(grad, expected, atol=1e-6)


def test_vq_encoder_gradient_of_the_loss_is_the_commitment_only():
    # sg[z] in the codebook term: the latent loss reaches the encoder through beta ||z - sg[z_q]||^2 alone
    q = build_quantizer("vq", num_codes=8, code_dim=D, beta=0.3).train()
    z = torch.randn(2, 5, D, requires_grad=True)
    out = q(z)
    out.loss.backward()
    codes = q.codebook.detach()[out.indices]
    torch.testing.assert_close(z.grad, 2 * 0.3 * (z.detach() - codes) / 2)  # per example: B = 2


def test_kmeans_init_on_first_training_batch_finds_the_blobs():
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 3.0]])
    rows = blobs(centres, 50)
    q = build_quantizer("vq", num_codes=4, code_dim=D, init="kmeans")
    q.eval()
    q(rows[None])  # eval: no initialisation
    assert not bool(q.kmeans_done)
    q.train()
    q(rows[None])
    assert bool(q.kmeans_done)
    # a Lloyd fixed point with one code per blob: each code is the mean of its blob's rows
    assign = torch.cdist(rows, q.codebook.detach()).argmin(-1)
    assert sorted(assign.reshape(4, 50)[:, 0].tolist()) == [0, 1, 2, 3]
    for blob in range(4):
        members = assign[blob * 50 : (blob + 1) * 50]
        assert (members == members[0]).all()
        torch.testing.assert_close(q.codebook.detach()[members[0]], rows[blob * 50 : (blob + 1) * 50].mean(0))
    before = q.codebook.detach().clone()
    q(rows[None] + 10.0)  # second batch: no re-initialisation
    assert torch.equal(q.codebook.detach(), before)


def test_kmeans_helper_reaches_a_lloyd_fixed_point():
    rows = blobs(torch.randn(5, D) * 4, 30, seed=3)
    book = torch.empty(5, D)
    kmeans_init_(book, rows, iters=20, generator=torch.Generator().manual_seed(0))
    assign = torch.cdist(rows, book).argmin(-1)
    for k in assign.unique():
        assert torch.allclose(book[k], rows[assign == k].mean(0), atol=1e-5)


# --------------------------------------------------------------------------------------
# vq_ema
# --------------------------------------------------------------------------------------
def test_ema_codebook_is_not_a_trainable_parameter():
    q = build_quantizer("vq_ema", num_codes=8, code_dim=D)
    assert all(p is not q.codebook for p in q.parameters())
    out = q.train()(torch.randn(2, 3, D, requires_grad=True))
    assert set(out.terms) == {"commitment"}


def test_ema_moves_only_used_codes_to_their_smoothed_means():
    q = build_quantizer("vq_ema", num_codes=8, code_dim=D, init="normal").train()
    before = q.codebook.clone()
    # rows near codes 1 and 5 only
    rows = torch.cat([blobs(before[1:2], 6, seed=1), blobs(before[5:6], 3, seed=2)])
    out = q(rows[None])
    idx = out.indices.reshape(-1)
    assert set(idx.tolist()) == {1, 5}
    unused = [k for k in range(8) if k not in (1, 5)]
    assert torch.equal(q.codebook[unused], before[unused])  # bit for bit
    # closed form after one step from N = m = 0 (Laplace smoothing, eps = 1e-5)
    gamma, eps, k = 0.99, 1e-5, 8
    n = torch.bincount(idx, minlength=k).float()
    total = (1 - gamma) * n.sum()
    for code in (1, 5):
        mean = rows[idx == code].mean(0)
        n_ema = (1 - gamma) * n[code]
        smoothed = (n_ema + eps) / (total + k * eps) * total
        assert torch.allclose(q.codebook[code], (1 - gamma) * n[code] * mean / smoothed, rtol=1e-6)
        assert torch.allclose(q.codebook[code], mean, rtol=1e-3)


def test_ema_reaches_the_mean_of_its_assigned_rows_and_stays():
    q = build_quantizer("vq_ema", num_codes=4, code_dim=D, decay=0.9, init="normal").train()
    rows = torch.cat([blobs(q.codebook[k : k + 1].clone(), 10, spread=0.01, seed=k) for k in range(4)])
    for _ in range(50):
        out = q(rows[None])
    idx = out.indices.reshape(-1)
    for code in idx.unique():
        assert torch.allclose(q.codebook[code], rows[idx == code].mean(0), atol=1e-4)


def test_ema_does_not_update_in_eval_mode():
    q = build_quantizer("vq_ema", num_codes=8, code_dim=D).eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(2, 5, D))
    for key, value in q.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_ema_used_keeps_a_code_used_earlier_but_not_in_this_batch_bit_for_bit():
    # the issue-14 mutation "EMA updating codes that were used earlier but not in this batch"
    q = build_quantizer("vq_ema", num_codes=6, code_dim=D, init="normal", update="used").train()
    start = q.codebook.clone()
    q(blobs(start[1:2], 5, seed=1)[None])  # batch 1 uses code 1 only
    after_first = q.codebook.clone()
    assert not torch.equal(after_first[1], start[1])
    count_1 = q.ema_count[1].item()
    out = q(blobs(start[4:5], 5, seed=2)[None])  # batch 2 uses code 4 only
    assert set(out.indices.reshape(-1).tolist()) == {4}
    assert torch.equal(q.codebook[1], after_first[1])  # bit for bit, although its count decayed
    assert q.ema_count[1].item() == pytest.approx(0.99 * count_1, rel=1e-6)
    assert not torch.equal(q.codebook[4], start[4])


def test_ema_all_follows_the_van_niekerk_update_by_hand():
    # bshall/ZeroSpeech VQEmbeddingEMA with gamma = 0.5, eps = 0.1, K = 3, D = 2
    q = build_quantizer("vq_ema", num_codes=3, code_dim=2, decay=0.5, eps=0.1, update="all").train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [10.0, 10.0]]))
        q.ema_sum.copy_(q.codebook)  # the reference starts its sum statistic at the codebook
    rows = torch.tensor([[0.2, 0.0], [0.0, 0.2], [1.0, 1.4]])
    out = q(rows[None])
    assert out.indices.reshape(-1).tolist() == [0, 0, 1]
    # N = 0.5 [2, 1, 0] = [1, 0.5, 0]; total 1.5; N <- (N + 0.1) / 1.8 * 1.5 = [11/12, 1/2, 1/12]
    assert torch.allclose(q.ema_count, torch.tensor([11 / 12, 1 / 2, 1 / 12]), rtol=1e-6)
    # m = 0.5 b + 0.5 S = [[0.1, 0.1], [1.0, 1.2], [5, 5]]; b = m / N, every code
    expected = torch.tensor([[0.1 * 12 / 11, 0.1 * 12 / 11], [2.0, 2.4], [60.0, 60.0]])
    assert torch.allclose(q.codebook, expected, rtol=1e-6)
    # second batch: the *stored* smoothed counts carry over, the unused codes move again
    n_old, m_old = q.ema_count.clone(), q.ema_sum.clone()
    out = q(torch.tensor([[[0.1, 0.1]]]))
    assert out.indices.reshape(-1).tolist() == [0]
    n = 0.5 * n_old + 0.5 * torch.tensor([1.0, 0.0, 0.0])
    total = n.sum()
    n = (n + 0.1) / (total + 3 * 0.1) * total
    m = 0.5 * m_old + 0.5 * torch.tensor([[0.1, 0.1], [0.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(q.ema_count, n, rtol=1e-6)
    assert torch.allclose(q.codebook, m / n[:, None], rtol=1e-6)
    assert not torch.equal(q.codebook[2], expected[2])  # unused, yet rewritten


def test_ema_all_starts_its_sum_statistic_at_the_codebook():
    q = build_quantizer("vq_ema", num_codes=5, code_dim=D, init="normal", update="all")
    assert torch.equal(q.ema_sum, q.codebook) and not torch.equal(q.ema_count, torch.ones(5))
    assert torch.equal(build_quantizer("vq_ema", num_codes=5, code_dim=D).ema_sum, torch.zeros(5, D))


def test_commitment_mean_reduction_is_the_reference_loss_times_the_data_dimensions():
    """Reference (bshall/ZeroSpeech + Eloff et al.): F.mse_loss(x_hat, x) / (2 s2) + beta F.mse_loss(z, z_q).
    speechsq: per-example sums. With commitment_reduction=mean the two differ by the constant
    factor n_mels x frames (the data dimensions of an example), so they train alike."""
    from torch.nn import functional as F

    from speechsq.likelihoods.gaussian import FixedVarianceGaussian

    b, frames, mels, d = 3, 32, 80, 64
    q = build_quantizer("vq_ema", num_codes=16, code_dim=d, commitment_reduction="mean", data_dims_per_position=160)
    assert q.commitment_weight == 0.25 * 2.5 == 0.625
    q.train()
    z = torch.randn(b, frames // 2, d)
    out = q(z)
    x, x_hat = torch.randn(b, mels, frames), torch.randn(b, mels, frames)
    recon = FixedVarianceGaussian(sigma2=0.1).nll(x_hat, x).terms["recon"]
    reference = F.mse_loss(x_hat, x) / (2 * 0.1) + 0.25 * F.mse_loss(z, out.z_q.detach())
    assert torch.allclose(recon + out.terms["commitment"], mels * frames * reference, rtol=1e-5)
    # the same beta with the default sum reduction is 2.5 times weaker
    fresh_mean = build_quantizer("vq_ema", num_codes=16, code_dim=d, commitment_reduction="mean", data_dims_per_position=160)
    fresh_sum = build_quantizer("vq_ema", num_codes=16, code_dim=d)
    fresh_sum.codebook.copy_(fresh_mean.codebook)
    ratio = fresh_mean.eval()(z).terms["commitment"] / fresh_sum.eval()(z).terms["commitment"]
    assert ratio.item() == pytest.approx(2.5, rel=1e-6)


def test_commitment_reduction_options_are_checked():
    with pytest.raises(QuantizerInputError, match="data_dims_per_position >= 1"):
        build_quantizer("vq_ema", num_codes=4, code_dim=D, commitment_reduction="mean")
    with pytest.raises(QuantizerInputError, match="only applies to commitment_reduction=mean"):
        build_quantizer("vq_ema", num_codes=4, code_dim=D, data_dims_per_position=160)
    with pytest.raises(QuantizerInputError, match="commitment_reduction must be one of"):
        build_quantizer("vq_ema", num_codes=4, code_dim=D, commitment_reduction="avg")
    with pytest.raises(QuantizerInputError, match="unknown EMA update 'some'"):
        build_quantizer("vq_ema", num_codes=4, code_dim=D, update="some")


# --------------------------------------------------------------------------------------
# vq_ema_reset (SQ-VAE App. E.1.2)
# --------------------------------------------------------------------------------------
def test_reset_redraws_least_used_code_near_most_used_every_20_batches():
    torch.manual_seed(0)
    q = build_quantizer("vq_ema_reset", num_codes=6, code_dim=D, init="normal").train()
    # every row is nearest to code 2: code 2 is the most used, codes 0, 1, 3.. never used
    target = q.codebook[2:3].clone()
    rows = blobs(target, 12, spread=0.01)
    start = q.codebook.clone()
    for batch in range(1, 20):
        out = q(rows[None])
        assert (out.indices == 2).all()
        others = [k for k in range(6) if k != 2]
        assert torch.equal(q.codebook[others], start[others]), f"reset before batch 20 (batch {batch})"
    torch.manual_seed(5)
    out = q(rows[None])  # batch 20: the least-used code (first of the unused: 0) is re-drawn
    most = q.codebook[2].clone()  # b_most after this batch's EMA step, which comes first
    assert out.metrics["code_resets"].item() == 1
    torch.manual_seed(5)
    # N(b_most, s^2 I) with s^2 = 0.01: b_most + 0.1 * (the same standard normal draw)
    torch.testing.assert_close(q.codebook[0], most + 0.1 * torch.randn(D))
    assert torch.equal(q.codebook[[1, 3, 4, 5]], start[[1, 3, 4, 5]])
    # the usage window restarts: the next reset is 20 batches later
    for _ in range(19):
        q(rows[None])
    assert int(q.resets_done) == 1
    q(rows[None])
    assert int(q.resets_done) == 2


def test_no_reset_when_every_code_is_used_often_enough():
    q = build_quantizer("vq_ema_reset", num_codes=4, code_dim=D, decay=0.9, init="normal").train()
    rows = torch.cat([blobs(q.codebook[k : k + 1].clone(), 5 + k, spread=0.01, seed=k) for k in range(4)])
    for _ in range(40):
        out = q(rows[None])
    assert out.indices.unique().numel() == 4
    assert int(q.resets_done) == 0


def _reset_quantizer(**options):
    q = build_quantizer("vq_ema_reset", num_codes=3, code_dim=2, **options).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, 0.0]]))
    return q


def _rows_at(q, per_code):
    """``per_code[k]`` rows exactly at code k (each code keeps its rows: the codes are far apart)."""
    return torch.cat([q.codebook[k].expand(n, 2) for k, n in enumerate(per_code)])[None].clone()


def test_reset_threshold_is_strictly_less_than_and_usage_is_a_plain_count_per_window():
    q = _reset_quantizer(reset_every=2, reset_threshold=0.5)
    # window 1: usage [4, 4, 2]: code 2 is used exactly half as often as the most-used code,
    # which is not *less* than 50 %: no reset
    q(_rows_at(q, [2, 2, 2]))
    q(_rows_at(q, [2, 2, 0]))
    assert torch.equal(q.usage, torch.zeros(3)) and int(q.resets_done) == 0
    # window 2: usage [4, 4, 1]: 1 < 0.5 * 4, code 2 is re-drawn
    q(_rows_at(q, [2, 2, 1]))
    assert torch.equal(q.usage, torch.tensor([2.0, 2.0, 1.0]))  # counts of this window so far
    q(_rows_at(q, [2, 2, 0]))
    assert int(q.resets_done) == 1


def test_reset_looks_at_the_last_window_only_and_keeps_the_ema_ratio_at_the_new_code():
    q = _reset_quantizer()  # defaults: every 20 batches, 3 %, s^2 = 0.01
    # batches 1-20: usage [200, 200, 20]; 20 >= 3 % of 200: no reset (it would be at 30 %)
    for _ in range(20):
        q(_rows_at(q, [10, 10, 1]))
    assert int(q.resets_done) == 0
    # batches 21-40: code 2 unused in this window, so it is re-drawn at batch 40, although it
    # was used 20 times since the start (20 >= 3 % of 400)
    for _ in range(19):
        q(_rows_at(q, [10, 10, 0]))
    torch.manual_seed(9)
    q(_rows_at(q, [10, 10, 0]))
    assert int(q.resets_done) == 1
    torch.manual_seed(9)
    redraw = q.codebook[0] + 0.1 * torch.randn(2)  # N(b_most, 0.01 I); ties go to the first code
    torch.testing.assert_close(q.codebook[2], redraw)
    # the EMA statistics of the re-drawn code point at it: m_2 = b_2 * N_2 ...
    n_old = q.ema_count.clone()
    assert n_old[2] > 0  # (used in the first window: its count has decayed, not vanished)
    torch.testing.assert_close(q.ema_sum[2], redraw * n_old[2])
    # ... so the next EMA step, one row exactly at the new code, starts from it:
    # N' = g N + (1 - g) n, m'_2 = g b_2 N_2 + (1 - g) b_2 = b_2 N'_2, b_2 <- m'_2 / N~'_2
    out = q(redraw[None, None].clone())
    assert out.indices.item() == 2
    gamma, eps = 0.99, 1e-5
    n_new = gamma * n_old + (1 - gamma) * torch.tensor([0.0, 0.0, 1.0])
    smoothed = (n_new[2] + eps) / (n_new.sum() + 3 * eps) * n_new.sum()
    torch.testing.assert_close(q.codebook[2], redraw * n_new[2] / smoothed)


# --------------------------------------------------------------------------------------
# data parallel: replicas stay identical
# --------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, result_file: str):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial codebook everywhere (as DDP's parameter broadcast gives)
    q = build_quantizer("vq_ema_reset", num_codes=6, code_dim=D, init="normal", reset_every=2).train()
    batches = [blobs(q.codebook[2:3].clone(), 8, spread=0.02, seed=s) for s in range(2 * world)]
    torch.manual_seed(1000 + rank)  # different RNG per rank: only the broadcast keeps the re-draw equal
    for step in range(2):
        q(batches[step * world + rank][None])
    torch.save({k: v.clone() for k, v in q.state_dict().items()}, f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_ema_and_reset_keep_data_parallel_replicas_identical(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    result = str(tmp_path / "state")
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), result), nprocs=world, join=True)
    s0, s1 = torch.load(f"{result}.0"), torch.load(f"{result}.1")
    for key in s0:
        assert torch.equal(s0[key], s1[key]), f"replicas differ in {key!r}"
    assert int(s0["resets_done"]) == 1
    # counts are those of ONE process seeing both ranks' 2 x 8 rows per step (all near code 2)
    per_step = 8.0 * world
    assert s0["ema_count"][2].item() == pytest.approx(0.99 * 0.01 * per_step + 0.01 * per_step, rel=1e-6)
