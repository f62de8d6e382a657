"""Image VQ-VAE family: the papers' ConvResNets, any quantizer, any decoder likelihood.

Networks (``model.network``), all for square images whose side is divisible by the
network's downsampling factor; ``width`` is the paper's d_b (64) unless noted:

``sqvae_two_layer``  SQ-VAE App. D.3 (Figure 2, MNIST): Conv4(w/2) BN ReLU, Conv4(w) |
                     ConvT4(w/2) BN ReLU, ConvT4(out). Factor 4 (28 -> 7).
``sqvae_mnist``      SQ-VAE App. E.1.2 MNIST: the two-layer net plus [ResBlock(w)] x 2 at the
                     end of the encoder and the start of the decoder. Also the 256-category
                     MNIST net of App. E.3.2 (same layers). Factor 4.
``sqvae_fashion_mnist``  the same with [ResBlock] x 6 (App. E.1.2). Factor 4.
``sqvae_cifar``      App. E.1.2 CIFAR-10 / CelebA: Conv4(w/2) BN ReLU, Conv4(w) BN ReLU,
                     Conv3(w), [ResBlock] x 6 | [ResBlock] x 6, ConvT3(w) BN ReLU,
                     ConvT4(w/2) BN ReLU, ConvT4(out). Factor 4 (32 -> 8, 64 -> 16). (The
                     paper's layer list writes ConvT3 with d_b/2 channels but its size
                     column, d_b, is what the next layer needs; we follow the size column.)
``sqvae_celebamask`` App. E.3.2 CelebAMask-HQ: Conv4(w/2) BN ReLU, Conv4(w) BN ReLU,
                     Conv4(w), [ResBlock] x 2 | [ResBlock] x 2, ConvT4(w) BN ReLU,
                     ConvT4(w/2) BN ReLU, ConvT4(out). Factor 8 (64 -> 8).
``sqvae_gray_celeba``  the same with [ResBlock] x 6 (App. E.3.2, 256 categories). Factor 8.
``sqvae_cifar_official``  the authors' CIFAR-10 net (sony/sqvae vision/networks/net_32.py with
                     cifar10_gauss_1.yaml): BN ReLU after the Conv3, [ResBlock] x 2 each way.
``sqvae_celeba_official``  the authors' CelebA net (net_64.py with celeba_gauss_*.yaml):
                     the paper's layers, but [ResBlock] x 5 at the start of the decoder.
``edvae``            EdVAE App. D.2 with n = ``width`` (128 in the paper): Conv_kw(n),
                     [EncRes(n)] x 2, MaxPool, [EncRes(2n)] x 2, MaxPool, [EncRes(4n)] x 2,
                     Conv1(latent) | [DecRes(4n)] x 2, Up, [DecRes(2n)] x 2, Up,
                     [DecRes(n)] x 2, ReLU, Conv1(out). Factor 4.

Conv4 / ConvT4: kernel 4, stride 2, padding 1; Conv3 / ConvT3: kernel 3, stride 1,
padding 1 (SQ-VAE Table 7). ResBlock(n) = x + BN(Conv1(ReLU(BN(Conv3(ReLU(x)))))).
EncRes(n) = skip(x) + Conv1(ReLU(Conv3(ReLU(Conv3(ReLU(Conv3(ReLU(x)))))))) and
DecRes(n) = skip(x) + Conv3(ReLU(Conv3(ReLU(Conv3(ReLU(Conv1(ReLU(x)))))))) (EdVAE Table 4),
where ``skip`` is the identity, or a 1x1 convolution where the block changes the channel
count (the table's "identity mapping" cannot add tensors of different widths).

Interfaces to the quantizer: the encoder ends in ``quantizer.input_dim`` channels and the
decoder starts from ``quantizer.code_dim`` channels; where those differ from the network's
width, a 1x1 convolution adapts them (for the paper settings, d_b = 64 = width, none is
added to the SQ-VAE nets). ``variance_head`` says where the extra channels of Gaussian
SQ-VAE (II)-(IV) (the log-variances) come from: ``adapter`` (default; the paper's text gives
no layer for them) takes them from that 1x1 convolution; ``resblock`` is the authors' image
code, a log-variance ResBlock of its own beside the last ResBlock of the encoder
(:class:`VarianceBranchEncoder`).

Data and likelihoods: continuous images (B, C, H, W) in [0, 1] go to a Gaussian likelihood
through a sigmoid output (App. E.1.2); categorical images (B, H, W) of ids go to the
``categorical`` (NC) or ``vmf`` likelihood, and the encoder sees what the likelihood's
``encoder_input`` makes of them (one-hot, or the projection onto the sphere).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechsq.errors import SpeechsqError
from speechsq.likelihoods import Likelihood
from speechsq.models.base import ModelOutput
from speechsq.models.registry import MODELS
from speechsq.quantizers import Quantizer, StepContext
from speechsq.registry import Registry

OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "none")


class ImageInputError(SpeechsqError, ValueError):
    """Images that the image model cannot work with (shape, channels, dtype, size)."""


# ----- building blocks ----------------------------------------------------------------------
def conv4(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 4, stride=2, padding=1)


def conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=1, padding=1)


def convt4(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)


def convt3(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 3, stride=1, padding=1)


def bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class ResBlock(nn.Module):
    """SQ-VAE Table 7: ReLU, Conv3, BN, ReLU, Conv1, BN, plus the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),  # not in-place: the input is also the identity branch
            conv3(channels, channels),
            *bn_relu(channels),
            nn.Conv2d(channels, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _skip(cin: int, cout: int) -> nn.Module:
    return nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)


class EncResBlock(nn.Module):
    """EdVAE Table 4: 3 x (ReLU, Conv3), ReLU, Conv1, plus the skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.ReLU(), conv3(cin if i == 0 else cout, cout)]
        layers += [nn.ReLU(), nn.Conv2d(cout, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.skip = _skip(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class DecResBlock(nn.Module):
    """EdVAE Table 4: ReLU, Conv1, 3 x (ReLU, Conv3), plus the skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        layers: list[nn.Module] = [nn.ReLU(), nn.Conv2d(cin, cout, 1)]
        for _ in range(3):
            layers += [nn.ReLU(), conv3(cout, cout)]
        self.body = nn.Sequential(*layers)
        self.skip = _skip(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _adapter(cin: int, cout: int) -> list[nn.Module]:
    """A 1x1 convolution where the quantizer's width differs from the network's."""
    return [] if cin == cout else [nn.Conv2d(cin, cout, 1)]


# ----- the network registry -----------------------------------------------------------------
@dataclass(frozen=True)
class NetworkDims:
    in_channels: int  # what the encoder sees (after the likelihood's encoder_input)
    latent_channels: int  # quantizer.input_dim
    code_dim: int  # quantizer.code_dim
    out_channels: int  # likelihood.out_channels(data channels)
    width: int  # d_b of SQ-VAE, n of EdVAE


@dataclass(frozen=True)
class ImageNetwork:
    build: Callable[[NetworkDims], tuple[nn.Module, nn.Module]]
    downsampling: int
    default_width: int
    description: str


IMAGE_NETWORKS: Registry[ImageNetwork] = Registry("image network")


def _register_network(name: str, downsampling: int, default_width: int, description: str):
    def wrap(build):
        IMAGE_NETWORKS.register(name)(ImageNetwork(build, downsampling, default_width, description))
        return build

    return wrap


def _two_layer_28(d: NetworkDims, num_res: int) -> tuple[nn.Module, nn.Module]:
    w, h = d.width, d.width // 2
    enc = [conv4(d.in_channels, h), *bn_relu(h), conv4(h, w), *[ResBlock(w) for _ in range(num_res)]]
    dec = [*[ResBlock(w) for _ in range(num_res)], convt4(w, h), *bn_relu(h), convt4(h, d.out_channels)]
    return (
        nn.Sequential(*enc, *_adapter(w, d.latent_channels)),
        nn.Sequential(*_adapter(d.code_dim, w), *dec),
    )


@_register_network("sqvae_two_layer", 4, 64, "SQ-VAE App. D.3 (Figure 2): two conv layers, no ResBlocks")
def _sqvae_two_layer(d: NetworkDims):
    return _two_layer_28(d, 0)


@_register_network("sqvae_mnist", 4, 64, "SQ-VAE App. E.1.2 / E.3.2 MNIST: two conv layers + 2 ResBlocks")
def _sqvae_mnist(d: NetworkDims):
    return _two_layer_28(d, 2)


@_register_network("sqvae_fashion_mnist", 4, 64, "SQ-VAE App. E.1.2 Fashion-MNIST: two conv layers + 6 ResBlocks")
def _sqvae_fashion_mnist(d: NetworkDims):
    return _two_layer_28(d, 6)


def _three_conv(d: NetworkDims, enc_res: int, dec_res: int, conv3_bn_relu: bool) -> tuple[nn.Module, nn.Module]:
    w, h = d.width, d.width // 2
    enc = [conv4(d.in_channels, h), *bn_relu(h), conv4(h, w), *bn_relu(w), conv3(w, w)]
    enc += [*(bn_relu(w) if conv3_bn_relu else []), *[ResBlock(w) for _ in range(enc_res)]]
    dec = [*[ResBlock(w) for _ in range(dec_res)], convt3(w, w), *bn_relu(w), convt4(w, h), *bn_relu(h), convt4(h, d.out_channels)]
    return nn.Sequential(*enc, *_adapter(w, d.latent_channels)), nn.Sequential(*_adapter(d.code_dim, w), *dec)


@_register_network("sqvae_cifar", 4, 64, "SQ-VAE App. E.1.2 CIFAR-10 / CelebA 64: 3 convs + 6 ResBlocks")
def _sqvae_cifar(d: NetworkDims):
    return _three_conv(d, 6, 6, conv3_bn_relu=False)


#: the authors' released nets where they differ from the paper text: (encoder ResBlocks, decoder
#: ResBlocks, BN ReLU after the Conv3) and their source
OFFICIAL_THREE_CONV_NETS = {
    "sqvae_cifar_official": (2, 2, True, "sony/sqvae vision/networks/net_32.py, cifar10_gauss_1.yaml num_rb 2: BN ReLU after Conv3"),
    "sqvae_celeba_official": (6, 5, False, "sony/sqvae vision/networks/net_64.py, celeba_gauss_*.yaml num_rb 6: 5 decoder ResBlocks"),
}
for _name, (_enc, _dec, _bn, _source) in OFFICIAL_THREE_CONV_NETS.items():
    _register_network(_name, 4, 64, _source)(partial(_three_conv, enc_res=_enc, dec_res=_dec, conv3_bn_relu=_bn))


def _three_stride_64(d: NetworkDims, num_res: int) -> tuple[nn.Module, nn.Module]:
    w, h = d.width, d.width // 2
    enc = [conv4(d.in_channels, h), *bn_relu(h), conv4(h, w), *bn_relu(w), conv4(w, w), *[ResBlock(w) for _ in range(num_res)]]
    dec = [
        *[ResBlock(w) for _ in range(num_res)],
        convt4(w, w), *bn_relu(w),
        convt4(w, h), *bn_relu(h),
        convt4(h, d.out_channels),
    ]  # fmt: skip
    return nn.Sequential(*enc, *_adapter(w, d.latent_channels)), nn.Sequential(*_adapter(d.code_dim, w), *dec)


@_register_network("sqvae_celebamask", 8, 64, "SQ-VAE App. E.3.2 CelebAMask-HQ: 3 stride-2 convs + 2 ResBlocks")
def _sqvae_celebamask(d: NetworkDims):
    return _three_stride_64(d, 2)


@_register_network("sqvae_gray_celeba", 8, 64, "SQ-VAE App. E.3.2 Gray-CelebA: 3 stride-2 convs + 6 ResBlocks")
def _sqvae_gray_celeba(d: NetworkDims):
    return _three_stride_64(d, 6)


@_register_network("edvae", 4, 128, "EdVAE App. D.2: Enc/DecResBlocks with max-pooling / upsampling")
def _edvae(d: NetworkDims, kernel: int = 3):
    n = d.width
    enc = [
        nn.Conv2d(d.in_channels, n, kernel, padding=kernel // 2),
        EncResBlock(n, n), EncResBlock(n, n), nn.MaxPool2d(2),
        EncResBlock(n, 2 * n), EncResBlock(2 * n, 2 * n), nn.MaxPool2d(2),
        EncResBlock(2 * n, 4 * n), EncResBlock(4 * n, 4 * n),
        nn.Conv2d(4 * n, d.latent_channels, 1),
    ]  # fmt: skip
    dec = [
        DecResBlock(d.code_dim, 4 * n), DecResBlock(4 * n, 4 * n), nn.Upsample(scale_factor=2),
        DecResBlock(4 * n, 2 * n), DecResBlock(2 * n, 2 * n), nn.Upsample(scale_factor=2),
        DecResBlock(2 * n, n), DecResBlock(n, n),
        nn.ReLU(), nn.Conv2d(n, d.out_channels, 1),
    ]  # fmt: skip
    return nn.Sequential(*enc), nn.Sequential(*dec)


# ----- where the quantizer's variance channels come from --------------------------------------
VARIANCE_HEADS = ("adapter", "resblock")


class ChannelMean(nn.Module):
    """Mean over the channel axis, kept as one channel: (B, C, H, W) -> (B, 1, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1, keepdim=True)


class VarianceBranchEncoder(nn.Module):
    """The authors' image encoder for Gaussian SQ-VAE (II)-(IV) (sony/sqvae vision/networks/
    net_28.py, net_32.py, net_64.py): the last ResBlock of the trunk is the mean head (``res_m``),
    a second ResBlock of the same width on the same features is the log-variance head
    (``res_v``). For one variance channel (II, III) the head's channels are averaged
    (``log_var.mean(dim=1)`` in vision/model.py; (II) is then pooled over positions by the
    quantizer), for D channels (IV) they are used as they are (a 1x1 convolution adapts the
    width where it differs from the quantizer's). Output: ``[mean (code_dim), log-variance (E)]``.
    """

    def __init__(self, encoder: nn.Sequential, width: int, extra_channels: int):
        super().__init__()
        last = max((i for i, layer in enumerate(encoder) if isinstance(layer, ResBlock)), default=None)
        if last is None:
            raise ValueError("model.variance_head=resblock needs a network whose encoder ends in ResBlocks")
        self.trunk = encoder[:last]
        self.mean_head = encoder[last:]
        reduce = [ChannelMean()] if extra_channels == 1 else _adapter(width, extra_channels)
        self.variance_head = nn.Sequential(ResBlock(width), *reduce)

    def forward(self, x: Tensor) -> Tensor:
        features = self.trunk(x)
        return torch.cat([self.mean_head(features), self.variance_head(features)], 1)


# ----- the model ----------------------------------------------------------------------------
class ImageVQVAE(nn.Module):
    """Encoder -> quantizer -> decoder -> likelihood, for continuous or categorical images.

    channels: data channels (1 grey, 3 RGB; 1 for categorical data);
    num_categories: None for continuous pixels, else the categories per pixel.
    """

    def __init__(
        self,
        quantizer: Quantizer,
        likelihood: Likelihood,
        network: str = "sqvae_mnist",
        channels: int = 1,
        num_categories: int | None = None,
        width: int | None = None,
        output_activation: str = "auto",
        normalize_latent: bool = False,
        variance_head: str = "adapter",
    ):
        super().__init__()
        if variance_head not in VARIANCE_HEADS:
            raise ValueError(f"unknown variance_head {variance_head!r}; choose one of {VARIANCE_HEADS}")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"unknown output_activation {output_activation!r}; choose one of {OUTPUT_ACTIVATIONS}")
        self.categorical = num_categories is not None
        if self.categorical and not hasattr(likelihood, "encoder_input"):
            raise ValueError(
                f"categorical pixels need a categorical likelihood (categorical, vmf), got {type(likelihood).__name__}"
            )
        if not self.categorical and hasattr(likelihood, "encoder_input"):
            raise ValueError(f"{type(likelihood).__name__} models category ids: set num_categories (pixels=categorical)")
        if self.categorical and int(channels) != 1:
            raise ValueError(f"categorical images have one channel of ids, got channels={channels}")
        self.channels = int(channels)
        self.num_categories = None if num_categories is None else int(num_categories)
        if self.categorical and getattr(likelihood, "num_categories", self.num_categories) != self.num_categories:
            raise ValueError(f"likelihood has {likelihood.num_categories} categories, the data {self.num_categories}")
        self.likelihood = likelihood
        if network not in IMAGE_NETWORKS:
            raise ValueError(f"unknown image network {network!r}; known: {', '.join(IMAGE_NETWORKS.names())}")
        spec = IMAGE_NETWORKS.get(network)
        self.network = network
        self.downsampling = spec.downsampling
        in_channels = self._encoder_input(self._dummy_target()).shape[1]
        dims = NetworkDims(
            in_channels=in_channels,
            latent_channels=quantizer.input_dim,
            code_dim=quantizer.code_dim,
            out_channels=likelihood.out_channels(self.channels),
            width=int(width or spec.default_width),
        )
        extra = quantizer.input_dim - quantizer.code_dim
        if variance_head == "resblock" and extra:
            if not hasattr(quantizer, "variance_form"):  # the Gaussian SQ family
                raise ValueError(
                    f"model.variance_head=resblock is the SQ-VAE image code's variance branch for sq_gauss2/3/4; "
                    f"{type(quantizer).__name__}'s extra channels are not a log-variance: use variance_head=adapter"
                )
            encoder, self.decoder = spec.build(replace(dims, latent_channels=quantizer.code_dim))
            self.encoder = VarianceBranchEncoder(encoder, dims.width, extra)
        else:
            self.encoder, self.decoder = spec.build(dims)
        self.variance_head = variance_head
        self._check_commitment_geometry(quantizer)
        self.quantizer = quantizer
        if output_activation == "auto":
            output_activation = "none" if self.categorical else "sigmoid"
        self.output_activation = output_activation
        self.normalize_latent = bool(normalize_latent)

    def _check_commitment_geometry(self, quantizer: Quantizer) -> None:
        """A commitment reduced as a mean (vq_ema ``commitment_reduction=mean``) is weighted by the
        data dimensions per latent position: it must be this model's, channels x downsampling^2."""
        given = getattr(quantizer, "data_dims_per_position", None)
        actual = self.channels * self.downsampling**2
        if given is not None and int(given) != actual:
            raise ValueError(
                f"quantizer.options.data_dims_per_position={given}, but this model has {actual} data dimensions per "
                f"latent position ({self.channels} channel(s) x {self.downsampling} x {self.downsampling}): "
                f"set quantizer.options.data_dims_per_position={actual}"
            )

    # ----- data <-> network -----------------------------------------------------------------
    def _dummy_target(self) -> Tensor:
        if self.categorical:
            return torch.zeros(1, 1, 1, 1, dtype=torch.long)
        return torch.zeros(1, self.channels, 1, 1)

    def _encoder_input(self, target: Tensor) -> Tensor:
        return self.likelihood.encoder_input(target) if self.categorical else target

    def _check_images(self, images: Tensor) -> Tensor:
        """-> the likelihood's target: (B, C, H, W) floats or (B, 1, H, W) ids."""
        if not torch.is_tensor(images):
            raise ImageInputError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if self.categorical:
            if images.dtype.is_floating_point or images.ndim != 3:
                raise ImageInputError(
                    f"categorical images must be (B, H, W) integer ids, got {images.dtype} {tuple(images.shape)}"
                )
            if images.numel() and (int(images.min()) < 0 or int(images.max()) >= self.num_categories):
                raise ImageInputError(f"category ids must lie in [0, {self.num_categories}), found [{int(images.min())}, {int(images.max())}]")
            target = images.long()[:, None]
        else:
            if not images.dtype.is_floating_point or images.ndim != 4:
                raise ImageInputError(f"continuous images must be (B, C, H, W) floats in [0, 1], got {images.dtype} {tuple(images.shape)}")
            if images.shape[1] != self.channels:
                raise ImageInputError(f"the model was built for {self.channels} channel(s), the images have {images.shape[1]}")
            if not torch.isfinite(images).all():
                raise ImageInputError("images contain NaN/Inf values")
            target = images
        h, w = target.shape[-2:]
        if h % self.downsampling or w % self.downsampling:
            raise ImageInputError(
                f"network {self.network!r} downsamples by {self.downsampling}: image size {h}x{w} must be divisible by it"
            )
        return target

    def _decode(self, z_q: Tensor) -> Tensor:
        out = self.decoder(z_q)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out

    def _latent(self, target: Tensor) -> Tensor:
        z = self.encoder(self._encoder_input(target))
        # vMF SQ-VAE (App. E.3.2) puts the encoder output on the unit sphere
        return F.normalize(z, dim=1) if self.normalize_latent else z

    # ----- training -------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor], ctx: StepContext | None = None) -> ModelOutput:
        ctx = ctx or StepContext()
        target = self._check_images(batch["images"])
        q = self.quantizer(self._latent(target), None, ctx)
        decoded = self._decode(q.z_q)
        nll = self.likelihood.nll(decoded, target)
        terms = {f"nll/{k}": v for k, v in nll.terms.items()}
        terms.update({f"latent/{k}": v for k, v in q.terms.items()})
        metrics = {**{k: v.detach() for k, v in nll.metrics.items()}, **{f"quantizer/{k}": v for k, v in q.metrics.items()}}
        metrics["nll"] = nll.loss.detach()
        metrics["latent_loss"] = q.loss.detach()
        recon = self.likelihood.mean(decoded.detach())
        return ModelOutput(
            loss=nll.loss + q.loss,
            terms=terms,
            metrics=metrics,
            outputs={"reconstruction": recon[:, 0] if self.categorical else recon, "indices": q.indices},
        )

    # ----- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """-> z_e (B, D_in, h, w), z_q (B, D, h, w), indices (B, h, w[, G]); deterministic."""
        was = self.training
        self.eval()
        try:
            z_e = self._latent(self._check_images(images))
            q = self.quantizer(z_e)
            return {"z_e": z_e, "z_q": q.z_q, "indices": q.indices}
        finally:
            self.train(was)

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """Deterministic reconstruction in data space: floats (B, C, H, W) or ids (B, H, W)."""
        was = self.training
        self.eval()
        try:
            out = self.likelihood.mean(self._decode(self.quantizer(self._latent(self._check_images(images))).z_q))
            return out[:, 0] if self.categorical else out
        finally:
            self.train(was)

    @torch.no_grad()
    def decode_indices(self, indices: Tensor) -> Tensor:
        """Codes (B, h, w) -> data-space images, as :meth:`reconstruct` would give."""
        was = self.training
        self.eval()
        try:
            out = self.likelihood.mean(self._decode(self.quantizer.decode(indices)))
            return out[:, 0] if self.categorical else out
        finally:
            self.train(was)


def _options(node: Any) -> dict:
    from omegaconf import OmegaConf

    if node is None:
        return {}
    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)


CATEGORICAL_DECODERS = ("vmf", "categorical")


def image_likelihood(m: dict) -> Likelihood:
    """The decoder likelihood for the data: ``m["likelihood"]`` (the quantizer's paired
    Gaussian) for continuous pixels; for categorical pixels ``categorical_decoder``:
    ``vmf`` (vMF SQ-VAE, with ``vmf_directions`` and ``vmf_init_kappa``) or ``categorical``
    (softmax + cross-entropy: NC SQ-VAE and the VQ-VAE baseline)."""
    from speechsq.models.speech import build_likelihood

    num_categories = m.get("num_categories")
    if num_categories is None:
        return build_likelihood(m["likelihood"])
    decoder = str(m.get("categorical_decoder", "vmf"))
    if decoder == "vmf":
        directions = str(m.get("vmf_directions", "one_hot"))
        return build_likelihood(
            {"name": "vmf", "num_categories": int(num_categories), "directions": directions,
             "init_kappa": float(m.get("vmf_init_kappa", 1.0))}
        )  # fmt: skip
    if decoder == "categorical":
        return build_likelihood({"name": "categorical", "num_categories": int(num_categories)})
    raise ValueError(f"unknown model.categorical_decoder {decoder!r}; choose one of {CATEGORICAL_DECODERS}")


@MODELS.register("image_vqvae")
def build_image_model(cfg: Any) -> ImageVQVAE:
    """``cfg.model``: network, width, channels, num_categories (both filled from the data),
    likelihood / categorical_decoder (see :func:`image_likelihood`), output_activation,
    normalize_latent, variance_head; ``cfg.quantizer`` as for every model."""
    from omegaconf import OmegaConf

    from speechsq.models.speech import build_quantizer_from_config

    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    m = _options(cfg.model)
    num_categories = m.get("num_categories")
    return ImageVQVAE(
        quantizer=build_quantizer_from_config(cfg.quantizer),
        likelihood=image_likelihood(m),
        network=str(m.get("network", "sqvae_mnist")),
        channels=int(m.get("channels", 1)),
        num_categories=None if num_categories is None else int(num_categories),
        width=m.get("width"),
        output_activation=str(m.get("output_activation", "auto")),
        normalize_latent=bool(m.get("normalize_latent", False)),
        variance_head=str(m.get("variance_head", "adapter")),
    )
