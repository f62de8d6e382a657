"""SQ-VAE Table 2's latent manipulations: Neighbor-k on hand-made codebooks (Euclidean,
ties, self excluded; cosine for vMF) and interpolation with projection to the nearest code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechsq.eval import latent_manipulation as LM
from speechsq.quantizers import build_quantizer

# b0..b5 in the plane; b6 duplicates b0. Squared distances from b0: b1 9, b2 1, b3 8, b4 2,
# b5 16, b6 0. In L1, b1 (3) would come before b3 (4): the Euclidean order puts b3 first.
CODEBOOK = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, -1.0], [0.0, -4.0], [0.0, 0.0]])


def brute_force_kth(codes: torch.Tensor, k: int) -> list[int]:
    out = []
    for c in range(codes.shape[0]):
        others = sorted((float(((codes[c] - codes[o]) ** 2).sum()), o) for o in range(codes.shape[0]) if o != c)
        out.append(others[k - 1][1])
    return out


def test_neighbor_k_picks_the_kth_nearest_other_code_of_b0_by_hand():
    # order from b0, itself excluded: b6 (0), b2 (1), b4 (2), b3 (8), b1 (9), b5 (16)
    expected = {1: 6, 2: 2, 3: 4, 4: 3, 5: 1, 6: 5}
    for k, code in expected.items():
        assert int(LM.neighbor_table(CODEBOOK, k)[0]) == code


def test_neighbor_k_table_matches_a_brute_force_sort_for_every_code():
    for k in range(1, 7):
        assert LM.neighbor_table(CODEBOOK, k).tolist() == brute_force_kth(CODEBOOK, k)
    # b3 = (2, 2): b1 (1 + 4 = 5) and b2 (4 + 1 = 5) tie at the 1st place; the lower index wins
    assert int(LM.neighbor_table(CODEBOOK, 1)[3]) == 1 and int(LM.neighbor_table(CODEBOOK, 2)[3]) == 2


def test_counting_the_code_itself_shifts_k_by_one():
    assert int(LM.neighbor_table(CODEBOOK, 1, count_self=True)[0]) == 0  # itself, before its duplicate b6
    assert int(LM.neighbor_table(CODEBOOK, 2, count_self=True)[0]) == 6
    for k in range(2, 8):
        assert torch.equal(LM.neighbor_table(CODEBOOK, k, count_self=True), LM.neighbor_table(CODEBOOK, k - 1))
    with pytest.raises(LM.ManipulationError, match=r"k must lie in \[1, 6\] for a codebook of 7 codes, got 7"):
        LM.neighbor_table(CODEBOOK, 7)
    with pytest.raises(LM.ManipulationError, match=r"k must lie in \[1, 7\]"):
        LM.neighbor_table(CODEBOOK, 0, count_self=True)


def test_neighbor_k_replaces_every_index_of_a_code_map():
    table = LM.neighbor_table(CODEBOOK, 3)
    # by hand, e.g. b1 = (3, 0): b3 (5), b0 (9), b6 (9, the higher index), b2 (10) -> b6
    assert table.tolist() == [4, 6, 3, 0, 2, 6, 4]
    indices = torch.tensor([[[0, 3], [5, 2]], [[1, 1], [6, 4]]])
    expected = torch.tensor(brute_force_kth(CODEBOOK, 3))[indices]
    assert torch.equal(LM.neighbor_k(indices, table), expected)
    assert LM.neighbor_k(indices, table)[0, 0, 0] == 4
    with pytest.raises(LM.ManipulationError, match=r"must lie in \[0, 7\), found \[0, 7\]"):
        LM.neighbor_k(torch.tensor([[0, 7]]), table)


def test_neighbors_come_from_the_quantizers_decoder_vectors():
    q = build_quantizer("vq", num_codes=7, code_dim=2)
    with torch.no_grad():
        q.codebook.copy_(CODEBOOK)
    torch.testing.assert_close(LM.code_vectors(q), CODEBOOK.double())
    assert LM.code_vectors(q).dtype == torch.float64


def test_vmf_neighbours_follow_the_cosine():
    """Raw vectors: b1 = (10, 1) is far from b0 = (1, 0) but at a small angle; b2 = (0.5, 0.5)
    is close but at 45 degrees. The vMF quantizer decodes unit vectors, so b1 is b0's
    nearest neighbour, while the raw Euclidean order would pick b2."""
    raw = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.5, 0.5], [-1.0, 0.2]])
    q = build_quantizer("sq_vmf", num_codes=4, code_dim=2)
    with torch.no_grad():
        q.codebook.copy_(raw)
    assert int(LM.neighbor_table(LM.code_vectors(q), 1)[0]) == 1
    assert int(LM.neighbor_table(raw, 1)[0]) == 2
    assert int(LM.neighbor_table(LM.code_vectors(q), 3)[0]) == 3


@pytest.mark.parametrize(
    "name,options,message",
    [("depthwise", {"groups": 2}, "2 codebooks per position"), ("spatial", {"groups": 2}, "no single codebook"),
     ("identity", {}, "no single codebook")],
)  # fmt: skip
def test_quantizers_without_one_codebook_are_clear_errors(name, options, message):
    q = build_quantizer(name, num_codes=4, code_dim=4, **options)
    with pytest.raises(LM.ManipulationError, match=message):
        LM.code_vectors(q)


class IdentityEncoder:
    """An 'image model' whose encoder output is the image itself (2 channels, 1x1)."""

    def __init__(self, quantizer):
        self.quantizer = quantizer

    def encode(self, images):
        return {"z_e": images}


def test_interpolation_mixes_encoder_outputs_then_projects_to_the_nearest_code():
    q = build_quantizer("vq", num_codes=4, code_dim=2)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    model = IdentityEncoder(q)
    z_a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]).reshape(4, 2, 1, 1)
    z_b = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).reshape(4, 2, 1, 1)
    ratios = torch.tensor([0.3, 0.8, 0.8, 0.45])
    # (0.3, 0.3) -> b0; (0.8, 0.8) -> b3; (0.8, 0) -> b1 (with the ratio on z_a it would be
    # (0.2, 0) -> b0); (0.55, 1) -> b3
    codes = LM.interpolated_codes(model, z_a, z_b, ratios)
    assert codes.reshape(-1).tolist() == [0, 3, 1, 3]
    torch.testing.assert_close(LM.mix(z_a, z_b, ratios)[3].reshape(-1), torch.tensor([0.55, 1.0]))
    with pytest.raises(LM.ManipulationError, match="3 mixing ratios for 4 pairs"):
        LM.mix(z_a, z_b, ratios[:3])


def test_pairs_never_pair_an_image_with_itself_and_ratios_are_seeded_uniforms():
    first, second = LM.interpolation_pairs(9, seed=4)
    assert sorted(first.tolist()) == list(range(9)) and sorted(second.tolist()) == list(range(9))
    assert all(a != b for a, b in zip(first, second))
    assert np.array_equal(second, np.roll(first, -1))
    again, _ = LM.interpolation_pairs(9, seed=4)
    assert np.array_equal(first, again) and not np.array_equal(first, LM.interpolation_pairs(9, seed=5)[0])
    ratios = LM.mixing_ratios(2000, seed=1)
    assert ratios.shape == (2000,) and ratios.min() >= 0.0 and ratios.max() <= 1.0
    # spread over the whole of [0, 1] (mean 1/2, standard error 0.0065 for 2000 draws)
    assert abs(ratios.mean() - 0.5) < 0.02 and ratios.min() < 0.01 and ratios.max() > 0.99
    assert np.array_equal(ratios, LM.mixing_ratios(2000, seed=1))
    with pytest.raises(LM.ManipulationError, match="at least 2 images"):
        LM.interpolation_pairs(1)


def test_each_pair_is_mixed_with_its_own_ratio():
    q = build_quantizer("vq", num_codes=4, code_dim=2)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    z_a = torch.zeros(2, 2, 1, 1)
    z_b = torch.ones(2, 2, 1, 1)
    # (0.2, 0.2) -> b0, (0.9, 0.9) -> b3
    codes = LM.interpolated_codes(IdentityEncoder(q), z_a, z_b, torch.tensor([0.2, 0.9]))
    assert codes.reshape(-1).tolist() == [0, 3]
