"""The gated PixelCNN prior: its exact causal receptive field (no blind spot), the NLL as
cross-entropy by hand, autoregressive sampling, class conditioning, and the code-map
batch source that trains it through the shared trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from speechsq.completion import MARKER
from speechsq.data.code_maps import CodeMapDataError, CodeMaps, build_code_map_source, code_dtype, read_code_maps, write_code_maps
from speechsq.errors import IncompleteOutputError
from speechsq.models import MODELS, build_model
from speechsq.models.pixelcnn import CodeMapError, GatedPixelCNN, sample_autoregressive


def _prior(num_codes=6, layers=2, kernel_size=3, num_classes=None, channels=8):
    return GatedPixelCNN(num_codes, channels=channels, layers=layers, kernel_size=kernel_size, head_channels=16,
                         num_classes=num_classes).double()  # fmt: skip


def expected_receptive_field(height, width, i, j, radius):
    """Positions whose codes the logits at (i, j) depend on: the L*r codes to the left in
    row i, and the rows i-1-L*r .. i-1 over columns j-L*r .. j+L*r (derived in the module
    docstring)."""
    out = set()
    for jj in range(max(0, j - radius), j):
        out.add((i, jj))
    for ii in range(max(0, i - 1 - radius), i):
        for jj in range(max(0, j - radius), min(width, j + radius + 1)):
            out.add((ii, jj))
    return out


def dependence(prior, height, width, i, j, labels=None):
    torch.manual_seed(3)
    x = torch.randn(1, prior.embedding.embedding_dim, height, width, dtype=torch.double, requires_grad=True)
    logits = prior.logits_from_embedding(x, labels)
    weights = torch.randn(prior.num_codes, dtype=torch.double)
    (logits[0, :, i, j] * weights).sum().backward()
    grad = x.grad[0].abs().sum(0)
    return {(int(a), int(b)) for a, b in (grad > 0).nonzero().tolist()}


@pytest.mark.parametrize(
    "layers,kernel_size,i,j",
    [(2, 3, 3, 3), (3, 3, 6, 2), (2, 5, 5, 4), (1, 3, 0, 0), (1, 3, 0, 5), (4, 3, 7, 8), (3, 5, 2, 0)],
)
def test_logits_depend_exactly_on_the_earlier_codes_of_the_receptive_field(layers, kernel_size, i, j):
    torch.manual_seed(0)
    prior = _prior(layers=layers, kernel_size=kernel_size)
    height, width = 8, 9
    radius = layers * (kernel_size // 2)
    assert prior.receptive_radius == radius
    seen = dependence(prior, height, width, i, j)
    assert seen == expected_receptive_field(height, width, i, j, radius)
    # nothing at or after (i, j) in raster order
    assert all(a * width + b < i * width + j for a, b in seen)


def test_no_blind_spot_to_the_upper_right():
    """The vanilla PixelCNN's stacked 3x3 masks never see (i-1, j+2) after two layers (nor
    (i-2, j+3) ...); the gated PixelCNN's vertical stack does."""
    torch.manual_seed(0)
    prior = _prior(layers=3, kernel_size=3)
    seen = dependence(prior, 8, 9, 5, 4)
    assert {(4, 5), (4, 6), (4, 7), (3, 7), (2, 7), (1, 7)} <= seen
    assert (5, 4) not in seen and (5, 5) not in seen and (6, 3) not in seen


def test_class_conditioning_keeps_the_mask_and_changes_the_logits():
    torch.manual_seed(0)
    prior = _prior(layers=2, num_classes=3)
    labels = torch.tensor([2])
    assert dependence(prior, 6, 6, 3, 2, labels) == expected_receptive_field(6, 6, 3, 2, 2)
    codes = torch.randint(0, 6, (1, 4, 4))
    a, b = prior.logits(codes, torch.tensor([0])), prior.logits(codes, torch.tensor([1]))
    assert not torch.allclose(a, b)
    with pytest.raises(CodeMapError, match="class-conditional .3 classes.: give labels"):
        prior.logits(codes)
    with pytest.raises(CodeMapError, match=r"labels must lie in \[0, 3\)"):
        prior.logits(codes, torch.tensor([3]))
    assert not any("class_bias" in name for name, _ in _prior().named_parameters())  # off by default


def _fixed_distribution_prior(probs):
    """A prior whose conditionals are ``probs`` at every position, whatever came before."""
    prior = _prior(num_codes=len(probs))
    last = prior.head[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.log(torch.tensor(probs, dtype=torch.double)))
    return prior


def test_nll_is_the_cross_entropy_computed_by_hand():
    prior = _fixed_distribution_prior([0.5, 0.25, 0.25])
    codes = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [1, 2]]])
    out = prior({"codes": codes})
    # map 1: -(2 ln 1/2 + 2 ln 1/4) = 6 ln 2; map 2: -4 ln 1/4 = 8 ln 2; mean over maps
    torch.testing.assert_close(out.loss, torch.tensor(7 * math.log(2.0), dtype=out.loss.dtype))
    torch.testing.assert_close(prior.log_prob(codes), -torch.tensor([6, 8], dtype=torch.double) * math.log(2.0))
    torch.testing.assert_close(out.metrics["bits_per_code"], torch.tensor(7 / 4, dtype=out.loss.dtype))
    torch.testing.assert_close(out.metrics["nats_per_code"], torch.tensor(7 * math.log(2.0) / 4, dtype=out.loss.dtype))
    assert out.terms == {"nll": out.loss}


def test_nll_of_a_random_prior_is_the_summed_log_softmax_of_its_logits():
    torch.manual_seed(1)
    prior = _prior(num_codes=5, layers=3)
    codes = torch.randint(0, 5, (3, 4, 5))
    out = prior({"codes": codes})
    logits = prior.logits(codes).detach()
    by_hand = 0.0
    for b in range(3):
        for i in range(4):
            for j in range(5):
                row = logits[b, :, i, j]
                by_hand -= float(row[codes[b, i, j]] - torch.logsumexp(row, 0))
    assert float(out.loss.detach()) == pytest.approx(by_hand / 3, rel=1e-9)
    out.loss.backward()
    assert prior.embedding.weight.grad is not None


def test_sampling_a_prior_with_all_mass_on_one_code_gives_that_code_everywhere():
    probs = [1e-300] * 7
    probs[4] = 1.0
    prior = _fixed_distribution_prior(probs)
    samples = prior.sample(5, 3, 4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 3, 4) and samples.dtype == torch.long
    assert torch.equal(samples, torch.full((5, 3, 4), 4))


def test_sampling_is_autoregressive_in_raster_order():
    """A conditional that puts all mass on (previous code + 1) mod K: only a sampler that
    fills the positions one at a time, in raster order, conditioning on what it drew,
    produces 0, 1, 2, ... along the raster."""
    num_codes, h, w = 5, 3, 4

    def logits_fn(codes):
        flat = codes.flatten(1)
        previous = torch.cat([torch.full_like(flat[:, :1], -1), flat[:, :-1]], dim=1)
        target = ((previous + 1) % num_codes).reshape(codes.shape)
        return torch.nn.functional.one_hot(target, num_codes).permute(0, 3, 1, 2).float() * 1e4

    codes = sample_autoregressive(logits_fn, 2, h, w, num_codes, generator=torch.Generator().manual_seed(0))
    expected = (torch.arange(h * w) % num_codes).reshape(h, w)
    assert torch.equal(codes, expected.expand(2, h, w))


def test_sampling_draws_from_the_softmax_of_the_logits():
    prior = _fixed_distribution_prior([0.2, 0.3, 0.5])
    samples = prior.sample(1, 2, 2, generator=torch.Generator().manual_seed(7), temperature=1.0)
    g = torch.Generator().manual_seed(7)
    probs = torch.tensor([[0.2, 0.3, 0.5]])
    expected = torch.tensor([int(torch.multinomial(probs, 1, generator=g)) for _ in range(4)]).reshape(1, 2, 2)
    assert torch.equal(samples, expected)
    # temperature 1/2 squares the probabilities: p^2 / sum p^2 = (4, 9, 25) / 38
    colder = prior.sample(1, 2, 2, generator=torch.Generator().manual_seed(7), temperature=0.5)
    g = torch.Generator().manual_seed(7)
    probs = torch.tensor([[4.0, 9.0, 25.0]]) / 38.0
    expected = torch.tensor([int(torch.multinomial(probs, 1, generator=g)) for _ in range(4)]).reshape(1, 2, 2)
    assert torch.equal(colder, expected)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        prior.sample(1, 2, 2, temperature=0.0)
    with pytest.raises(CodeMapError, match="code-map size is unknown"):
        prior.sample(1)


def test_bad_code_maps_are_clear_errors():
    prior = _prior(num_codes=6)
    with pytest.raises(CodeMapError, match=r"\(B, H, W\) integer code indices, got torch.float32"):
        prior({"codes": torch.zeros(1, 2, 2)})
    with pytest.raises(CodeMapError, match=r"must lie in \[0, 6\).*found \[0, 6\]"):
        prior({"codes": torch.tensor([[[0, 6]]])})
    with pytest.raises(ValueError, match="kernel_size must be odd and >= 3"):
        GatedPixelCNN(4, kernel_size=4)


def test_prior_is_built_from_a_config():
    assert "pixelcnn_prior" in MODELS
    cfg = {"model": {"name": "pixelcnn_prior", "num_codes": 12, "height": 4, "width": 5, "channels": 8, "layers": 3,
                     "kernel_size": 5, "head_channels": 16, "num_classes": None}}  # fmt: skip
    prior = build_model(cfg)
    assert (prior.num_codes, prior.height, prior.width, prior.receptive_radius) == (12, 4, 5, 6)
    assert prior.sample(2).shape == (2, 4, 5)
    cfg["model"]["num_codes"] = None
    with pytest.raises(ValueError, match="model.num_codes is not set"):
        build_model(cfg)


# ----- code maps on disk and the batch source -------------------------------------------------
def test_code_maps_round_trip_exactly_with_the_smallest_dtype(tmp_path):
    codes = np.array([[[0, 5], [63, 7]], [[1, 1], [2, 3]], [[9, 8], [7, 6]]])
    labels = np.array([4, 0, 9])
    write_code_maps(tmp_path / "c", CodeMaps("digits", "train", codes, labels, 64), checkpoint="x.pt")
    assert np.load(tmp_path / "c" / "codes.npy").dtype == np.int16
    maps = read_code_maps(tmp_path / "c")
    assert np.array_equal(maps.codes, codes) and np.array_equal(maps.labels, labels)
    assert (maps.num_codes, maps.shape, maps.dataset, maps.split) == (64, (2, 2), "digits", "train")
    marker = json.loads((tmp_path / "c" / MARKER).read_text())
    assert (marker["kind"], marker["count"], marker["height"], marker["width"]) == ("code_maps", 3, 2, 2)
    assert code_dtype(32767) == np.int16 and code_dtype(32768) == np.int64
    write_code_maps(tmp_path / "c", CodeMaps("digits", "train", codes, None, 64))  # rewritten without labels
    assert read_code_maps(tmp_path / "c").labels is None
    big = np.array([[[40000]]])
    write_code_maps(tmp_path / "big", CodeMaps("d", "train", big, None, 50000))
    assert np.load(tmp_path / "big" / "codes.npy").dtype == np.int64
    assert read_code_maps(tmp_path / "big").codes[0, 0, 0] == 40000 and read_code_maps(tmp_path / "big").labels is None


def test_unfinished_or_altered_code_maps_are_clear_errors(tmp_path):
    with pytest.raises(IncompleteOutputError, match="does not exist; write it with `speechsq extract-codes"):
        read_code_maps(tmp_path / "none")
    write_code_maps(tmp_path / "c", CodeMaps("digits", "train", np.zeros((3, 2, 2), int), None, 8))
    np.save(tmp_path / "c" / "codes.npy", np.zeros((2, 2, 2), np.int16))
    with pytest.raises(CodeMapDataError, match="complete.json records 3 maps of 2x2"):
        read_code_maps(tmp_path / "c")
    np.save(tmp_path / "c" / "codes.npy", np.array([None, 1, 2], dtype=object), allow_pickle=True)
    with pytest.raises(CodeMapDataError, match="cannot read the code maps"):
        read_code_maps(tmp_path / "c")
    np.save(tmp_path / "c" / "codes.npy", np.zeros((3, 2, 2), np.int16))
    np.save(tmp_path / "c" / "labels.npy", np.zeros(2, np.int64))
    with pytest.raises(CodeMapDataError, match=r"\(2,\) labels for 3 code maps"):
        read_code_maps(tmp_path / "c")
    (tmp_path / "c" / MARKER).unlink()
    with pytest.raises(IncompleteOutputError, match="is incomplete"):
        read_code_maps(tmp_path / "c")
    with pytest.raises(CodeMapDataError, match=r"must lie in \[0, 8\), found \[0, 8\]"):
        write_code_maps(tmp_path / "d", CodeMaps("digits", "train", np.array([[[0, 8]]]), None, 8))


def test_code_map_source_gives_seeded_batches_and_sets_the_model_size(tmp_path):
    codes = np.arange(10 * 2 * 3).reshape(10, 2, 3) % 7
    write_code_maps(tmp_path / "c", CodeMaps("digits", "train", codes, np.arange(10), 7))
    source = build_code_map_source({"codes_dir": str(tmp_path / "c"), "batch_size": 4}, seed=5)
    assert source.model_overrides() == {"num_codes": 7, "height": 2, "width": 3}
    order = np.random.default_rng([5, 0]).permutation(10)
    batch = source.next_batch()
    assert torch.equal(batch["codes"], torch.from_numpy(codes[order[:4]]))
    assert torch.equal(batch["labels"], torch.from_numpy(order[:4]))
    state = source.state_dict()
    following = source.next_batch()
    again = build_code_map_source({"codes_dir": str(tmp_path / "c"), "batch_size": 4}, seed=5)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()["codes"], following["codes"])
    with pytest.raises(CodeMapDataError, match="data.codes_dir is not set"):
        build_code_map_source({"codes_dir": None})


def test_grouped_codes_cannot_be_extracted():
    from speechsq.data.code_maps import encode_split
    from speechsq.data.images import load_image_dataset
    from speechsq.likelihoods import LIKELIHOODS
    from speechsq.models.image import ImageVQVAE
    from speechsq.quantizers import build_quantizer

    q = build_quantizer("depthwise", num_codes=4, code_dim=8, groups=2)
    model = ImageVQVAE(q, LIKELIHOODS.get("gaussian_fixed")(sigma2=0.1), "sqvae_two_layer", 1, width=8)
    with pytest.raises(CodeMapDataError, match="2 codebooks per position"):
        encode_split(model, load_image_dataset("digits", "test", limit=4))


def test_prior_trains_on_extracted_codes_through_the_shared_trainer(tmp_path):
    from speechsq.data.code_maps import extract_code_maps
    from speechsq.training import build_run, compose_config, load_model

    image_cfg = compose_config([
        "experiment=images_digits", "quantizer=vq", "quantizer.num_codes=8", "quantizer.code_dim=8", "model.width=8",
        "data.limit=64", "training.steps=2", "training.progress=false", f"exp_dir={tmp_path / 'image'}",
    ])  # fmt: skip
    build_run(image_cfg).fit()
    ckpt = tmp_path / "image" / "checkpoints" / "last.pt"
    from speechsq.cli import main as speechsq_main

    assert speechsq_main(["extract-codes", "--checkpoint", str(ckpt), "--out", str(tmp_path / "codes"), "--limit", "64"]) == 0
    maps = read_code_maps(tmp_path / "codes")
    image_model, _ = load_model(ckpt)
    from speechsq.data.images import load_image_dataset

    images = load_image_dataset("digits", "train", limit=64).tensors(np.arange(64))["images"]
    assert np.array_equal(maps.codes, image_model.encode(images)["indices"].numpy())  # the model's own codes
    assert json.loads((tmp_path / "codes" / MARKER).read_text())["checkpoint"] == str(ckpt.resolve())

    cfg = compose_config([
        "experiment=prior_digits", f"data.codes_dir={tmp_path / 'codes'}", "data.batch_size=16", "training.steps=60",
        "training.milestones=[]", "training.lr=3e-3", "training.progress=false", f"exp_dir={tmp_path / 'prior'}",
    ])  # fmt: skip
    trainer = build_run(cfg)
    codes = torch.from_numpy(maps.codes.astype(np.int64))
    with torch.no_grad():
        before = float(-trainer.raw_model.log_prob(codes).mean())
    trainer.fit()
    prior, saved = load_model(tmp_path / "prior" / "checkpoints" / "last.pt")
    assert (saved.model.num_codes, saved.model.height, saved.model.width) == (8, 4, 4)  # from the code maps
    written = json.loads((tmp_path / "prior" / "code_maps.json").read_text())
    assert (written["code_maps"], written["num_codes"], written["labels"]) == (64, 8, True)
    with torch.no_grad():
        after = float(-prior.log_prob(codes).mean())
    # the unigram entropy of the codes: what a prior ignoring every neighbour achieves at best
    counts = np.bincount(maps.codes.reshape(-1), minlength=8)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum()) * 16
    assert after < unigram < before
    decoded = image_model.decode_indices(prior.sample(3, generator=torch.Generator().manual_seed(0)))
    assert decoded.shape == (3, 1, 16, 16)
    with pytest.raises(CodeMapDataError, match="is a GatedPixelCNN, not an image model"):
        extract_code_maps(tmp_path / "prior" / "checkpoints" / "last.pt", "train", tmp_path / "x")


def test_prior_config_needs_its_code_maps():
    from speechsq.training import ConfigError, build_run, compose_config

    with pytest.raises(ConfigError, match="data.codes_dir"):
        build_run(compose_config(["experiment=prior_digits"]))


def test_gate_residual_and_precision_helpers():
    from speechsq.models.pixelcnn import GatedLayer, _full_precision, _gate

    a, b = torch.tensor([[[[0.5]]], [[[-1.0]]]]).reshape(1, 2, 1, 1).chunk(2, dim=1)
    torch.testing.assert_close(_gate(torch.cat([a, b], 1)), torch.tanh(a) * torch.sigmoid(b))
    assert _full_precision(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert _full_precision(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64
    for first in (True, False):
        layer = GatedLayer(4, 3, first=first, num_classes=None)
        torch.nn.init.zeros_(layer.h_out.weight)
        torch.nn.init.zeros_(layer.h_out.bias)
        v, h = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
        _, h_new = layer(v, h, None)
        # layers after the first add their output to their input; the first sees the
        # current code in its input, so it must not pass it on
        torch.testing.assert_close(h_new, torch.zeros_like(h) if first else h)


def test_conditional_sampling_and_label_checks():
    torch.manual_seed(0)
    prior = _prior(num_codes=4, num_classes=2)
    prior.height, prior.width = 2, 3
    prior.train()
    samples = prior.sample(3, labels=torch.tensor([0, 1, 1]), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 2, 3) and prior.training  # the mode is restored
    with pytest.raises(CodeMapError, match="2 labels for 3 code maps"):
        prior.sample(3, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"logits_fn returned \(1, 3\) at \(0, 0\), expected \(1, 4\)"):
        sample_autoregressive(lambda codes: torch.zeros(1, 3, 2, 2), 1, 2, 2, 4)


def test_head_is_relu_conv_relu_conv_on_the_horizontal_stack():
    """logits = Conv1x1(ReLU(Conv1x1(ReLU(h_L)))) with h_L the last horizontal stack output."""
    torch.manual_seed(0)
    prior = _prior(num_codes=5, layers=2)
    x = torch.randn(2, 8, 3, 4, dtype=torch.double)
    v = h = x
    for layer in prior.layers:
        v, h = layer(v, h, None)
    first, second = prior.head[1], prior.head[3]
    by_hand = second(torch.relu(first(torch.relu(h))))
    assert (h < 0).any()  # the first ReLU matters
    torch.testing.assert_close(prior.logits_from_embedding(x), by_hand)


def test_sampling_keeps_an_eval_prior_in_eval_mode():
    prior = _prior(num_codes=4)
    prior.height, prior.width = 2, 2
    prior.eval()
    prior.sample(1, generator=torch.Generator().manual_seed(0))
    assert not prior.training
