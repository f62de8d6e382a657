"""The speech VQ-VAE family of SQ-VAE App. E.2.2 (after van Niekerk et al. 2020), with any
quantizer of the registry and any registered likelihood.

Encoder on an (n_mels, N) log-Mel spectrogram (768 channels, no bias before BatchNorm)::

    Conv(3) BN ReLU, Conv(3) BN ReLU, Conv(4, stride 2) BN ReLU, Conv(3) BN ReLU, Conv(3) BN ReLU,
    Conv(1) -> quantizer.input_dim           (d_b = 64 plus whatever extras the quantizer asks for)

Decoder on the quantized (N/2, d_b) sequence::

    Jitter(0.5) -> concat 64-dim speaker embedding -> nearest x2 upsampling
    -> 2 x BiGRU(128) -> Linear -> likelihood.out_channels(n_mels)

Padding and cropping, as the reference implementations (bshall/ZeroSpeech, sony/sqvae):

* Training segments are 32 frames plus one context frame on each side (34 frames). The first
  convolution has **no padding**, so it consumes the two context frames (34 -> 32); the other
  kernel-3 convolutions pad by 1, the stride-2 kernel-4 convolution pads by 1 (32 -> 16).
* The decoder output has 32 frames and the loss covers exactly the 32 central frames
  ``feats[:, :, 1:-1]``: the context frames are input only.
* For evaluation (:meth:`encode`, :meth:`reconstruct`) a whole utterance of T frames gets one
  replicated context frame on each side (plus one more replicated frame at the end when T is
  odd, so the stride-2 convolution covers every frame), and the output is cropped back to T.
  The reference instead drops the first and last frame from its comparison; here every frame
  is reconstructed, so an evaluation can score all T.
* Batched, padded input is exact: every convolution with padding sees zeros beyond each
  example's length (its input is masked), the quantizer gets the latent mask, the BiGRU runs
  on packed sequences, and jitter never reaches into padding. (With ``norm: group`` the
  group statistics do include padding; BatchNorm in eval mode is per-frame and exact.)

Loss, "per example" like every term in speechsq: ``likelihood NLL + quantizer latent loss``,
each summed over the valid dimensions / positions of an example and averaged over the batch.
``loss_normalization`` says what the model finally back-propagates:

``example``    that sum (the reference code; the loss is O(10^3) per 34-frame segment, so the
               gradient clipping at 1 is active essentially always, which with Adam amounts to
               a per-step normalised gradient).
``dimension``  the same divided by the number of valid data dimensions per example
               (n_mels x 32 in training), an O(1) loss for which clipping at 1 is a real bound.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechsq.errors import SpeechsqError
from speechsq.likelihoods import LIKELIHOODS, Likelihood
from speechsq.models.base import ModelOutput
from speechsq.models.jitter import Jitter
from speechsq.models.registry import MODELS
from speechsq.quantizers import Quantizer, StepContext, build_quantizer

LOSS_NORMALIZATIONS = ("example", "dimension")
NORMS = ("batch", "group", "none")
CONTEXT_FRAMES = 1  # what the unpadded first convolution (kernel 3) consumes on each side

# (kernel, stride, padding) of the five encoder convolutions (SQ-VAE Table 8 / E.2.2)
ENCODER_LAYERS = ((3, 1, 0), (3, 1, 1), (4, 2, 1), (3, 1, 1), (3, 1, 1))


class SpeechInputError(SpeechsqError, ValueError):
    """Features, lengths or speaker ids that the speech model cannot work with."""


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "group":  # per-example statistics: data-parallel runs match one process exactly
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def _frame_mask(lengths: Tensor, frames: int) -> Tensor:
    """(B, T) bool, True for the first ``lengths[b]`` frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


class SpeechEncoder(nn.Module):
    """Five conv blocks and a 1x1 projection; ``(B, n_mels, T + 2) -> (B, T / 2, out_dim)``."""

    def __init__(self, n_mels: int, channels: int, out_dim: int, norm: str = "batch"):
        super().__init__()
        blocks = []
        in_ch = n_mels
        for kernel, stride, padding in ENCODER_LAYERS:
            blocks.append(
                nn.Sequential(
                    # no bias before a normalisation layer: its shift makes the bias redundant
                    nn.Conv1d(in_ch, channels, kernel, stride, padding, bias=norm == "none"),
                    _norm_layer(norm, channels),
                    nn.ReLU(inplace=True),
                )
            )
            in_ch = channels
        self.blocks = nn.ModuleList(blocks)
        self.project = nn.Conv1d(channels, out_dim, 1)

    def forward(self, x: Tensor, inner_lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x: (B, n_mels, T + 2) with one context frame each side; inner_lengths: optional (B,)
        even numbers of real frames between the context frames (None: all T frames are real).

        Returns z_e (B, T / 2, out_dim) and the latent lengths (or None).
        """
        lengths = inner_lengths
        for block, (_, stride, padding) in zip(self.blocks, ENCODER_LAYERS):
            if lengths is not None and padding > 0:
                # zero beyond each example's end: the convolution then sees exactly the zero
                # padding it would see on that example alone
                x = x * _frame_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
            x = block(x)
            if lengths is not None and stride > 1:
                lengths = torch.div(lengths, stride, rounding_mode="floor")
        if lengths is not None:
            x = x * _frame_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        return self.project(x).transpose(1, 2), lengths


class SpeechDecoder(nn.Module):
    """Speaker-conditioned BiGRU decoder; ``(B, T', d_b) -> (B, out_channels, 2 T')``."""

    def __init__(self, code_dim: int, n_speakers: int, out_channels: int, speaker_dim: int = 64,
                 hidden: int = 128, layers: int = 2, upsample: int = 2):
        super().__init__()
        self.upsample = int(upsample)
        self.speaker_embedding = nn.Embedding(n_speakers, speaker_dim)
        self.rnn = nn.GRU(code_dim + speaker_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, out_channels)

    def forward(self, z: Tensor, speaker: Tensor, latent_lengths: Tensor | None = None) -> Tensor:
        b, t, _ = z.shape
        spk = self.speaker_embedding(speaker)[:, None, :].expand(b, t, -1)
        h = torch.cat([z, spk.to(z.dtype)], dim=-1)
        h = h.repeat_interleave(self.upsample, dim=1)  # nearest-neighbour interpolation x2
        if latent_lengths is None:
            h, _ = self.rnn(h)
        else:
            frames = (latent_lengths * self.upsample).cpu()
            packed = pack_padded_sequence(h, frames, batch_first=True, enforce_sorted=False)
            h, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=t * self.upsample)
        return self.out(h).transpose(1, 2)


class SpeechVQVAE(nn.Module):
    """Encoder -> quantizer -> jitter + speaker -> BiGRU decoder -> likelihood."""

    def __init__(
        self,
        quantizer: Quantizer,
        likelihood: Likelihood,
        n_speakers: int,
        n_mels: int = 80,
        encoder_channels: int = 768,
        norm: str = "batch",
        speaker_dim: int = 64,
        decoder_hidden: int = 128,
        decoder_layers: int = 2,
        jitter: float = 0.5,
        loss_normalization: str = "example",
        speakers: list[str] | None = None,
        features: dict | None = None,
    ):
        super().__init__()
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"unknown loss_normalization {loss_normalization!r}; choose one of {LOSS_NORMALIZATIONS}")
        if int(n_speakers) < 1:
            raise ValueError(f"n_speakers must be >= 1, got {n_speakers}")
        if speakers is not None and len(speakers) != int(n_speakers):
            raise ValueError(f"{len(speakers)} speaker names for n_speakers={n_speakers}")
        self.n_mels = int(n_mels)
        self.n_speakers = int(n_speakers)
        self.speakers = list(speakers) if speakers is not None else None
        # the training features' preprocessing config and cmvn.npz path: only for listening to
        # and looking at outputs (summaries); never part of the computation
        self.features = dict(features) if features else None
        self.loss_normalization = loss_normalization
        self.encoder = SpeechEncoder(self.n_mels, encoder_channels, quantizer.input_dim, norm)
        self.quantizer = quantizer
        self.jitter = Jitter(jitter)
        self.decoder = SpeechDecoder(
            quantizer.code_dim, self.n_speakers, likelihood.out_channels(self.n_mels), speaker_dim, decoder_hidden, decoder_layers
        )
        self.likelihood = likelihood

    # ----- training -----------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor], ctx: StepContext | None = None) -> ModelOutput:
        """batch: feats (B, n_mels, T + 2) segments with one context frame each side,
        speaker (B,), optional lengths (B,) counting the context frames too."""
        ctx = ctx or StepContext()
        feats, speaker = self._check_feats(batch["feats"]), self._check_speaker(batch["speaker"], batch["feats"])
        total = feats.shape[-1]
        inner = total - 2 * CONTEXT_FRAMES
        lengths = batch.get("lengths")
        inner_lengths = None
        if lengths is not None and bool((lengths != total).any()):
            inner_lengths = lengths.to(feats.device).long() - 2 * CONTEXT_FRAMES
        self._check_inner_frames(inner, inner_lengths)

        z_e, latent_lengths = self.encoder(feats, inner_lengths)
        latent_mask = None if latent_lengths is None else _frame_mask(latent_lengths, z_e.shape[1])
        q = self.quantizer(z_e, latent_mask, ctx)
        decoded = self.decoder(self.jitter(q.z_q, latent_lengths), speaker, latent_lengths)

        # the loss covers the real frames between the context frames (as the reference)
        target = feats[:, :, CONTEXT_FRAMES : total - CONTEXT_FRAMES]
        target_mask = None if inner_lengths is None else _frame_mask(inner_lengths, inner)[:, None, :]
        nll = self.likelihood.nll(decoded, target, target_mask)

        scale = 1.0
        if self.loss_normalization == "dimension":
            valid = inner_lengths.sum() if inner_lengths is not None else inner * feats.shape[0]
            scale = 1.0 / (self.n_mels * valid / feats.shape[0])
        terms = {f"nll/{k}": v * scale for k, v in nll.terms.items()}
        terms.update({f"latent/{k}": v * scale for k, v in q.terms.items()})
        loss = (nll.loss + q.loss) * scale
        metrics = {**{k: v.detach() for k, v in nll.metrics.items()}, **{f"quantizer/{k}": v for k, v in q.metrics.items()}}
        metrics["nll"] = nll.loss.detach()
        metrics["latent_loss"] = q.loss.detach()
        return ModelOutput(loss=loss, terms=terms, metrics=metrics, outputs={"reconstruction": self.likelihood.mean(decoded.detach())})

    # ----- evaluation (docs/ARCHITECTURE.md section 4) ------------------------------------
    @torch.no_grad()
    def encode(self, feats: Tensor, lengths: Tensor | None = None) -> dict[str, Tensor]:
        """Whole utterances (B, n_mels, T) -> z_e (B, T', D_in), z_q (B, T', D), indices (B, T')
        and lengths (B,) with T' = ceil(T / 2); deterministic (eval mode)."""
        with _eval_mode(self):
            return self._encode(feats, lengths)

    @torch.no_grad()
    def reconstruct(self, feats: Tensor, lengths: Tensor | None, speaker: Tensor) -> Tensor:
        """Deterministic reconstruction (B, n_mels, T); frames beyond each length are zero."""
        with _eval_mode(self):
            enc = self._encode(feats, lengths)
            out = self._decode(enc["z_q"].to(feats.dtype), speaker, enc["lengths"])[:, :, : feats.shape[-1]]
            return out * _frame_mask(enc["frame_lengths"], feats.shape[-1])[:, None, :].to(out.dtype)

    @torch.no_grad()
    def decode(self, z_q: Tensor, speaker: Tensor, latent_lengths: Tensor | None = None) -> Tensor:
        """Quantised codes (B, T', code_dim) -> the likelihood mean (B, n_mels, 2 T') in the
        given speakers' voices, deterministic (eval mode); what :meth:`reconstruct` decodes.
        ``latent_lengths`` (B,) for padded batches (frames beyond 2 * length are zero)."""
        if not torch.is_tensor(z_q) or z_q.ndim != 3 or z_q.shape[-1] != self.quantizer.code_dim:
            shape = tuple(z_q.shape) if torch.is_tensor(z_q) else type(z_q).__name__
            raise SpeechInputError(f"codes must be (B, T', code_dim={self.quantizer.code_dim}), got {shape}")
        if latent_lengths is None:
            latent_lengths = torch.full((z_q.shape[0],), z_q.shape[1], dtype=torch.long, device=z_q.device)
        with _eval_mode(self):
            out = self._decode(z_q, speaker, latent_lengths.to(z_q.device).long())
            return out * _frame_mask(latent_lengths * self.decoder.upsample, out.shape[-1])[:, None, :].to(out.dtype)

    def _decode(self, z_q: Tensor, speaker: Tensor, latent_lengths: Tensor) -> Tensor:
        speaker = self._check_speaker(speaker, z_q)
        return self.likelihood.mean(self.decoder(z_q, speaker, latent_lengths))

    def summaries(self, batch: dict[str, Tensor]) -> dict[str, dict]:
        """TensorBoard media of the first example of ``batch`` (the trainer's checkpoint hook):
        ``images`` (input / reconstruction / conversion spectrograms in dB with a colourbar),
        ``audio`` (the same through the Griffin-Lim vocoder, when the preprocessing config is
        known) and ``text``; see :func:`speechsq.models.summaries.speech_summaries`."""
        from speechsq.models.summaries import speech_summaries

        return speech_summaries(self, batch)

    def speaker_ids(self, names: list[str]) -> Tensor:
        """Speaker names (from utt2spk) -> the ids used in training."""
        if self.speakers is None:
            raise SpeechInputError("this model was built without speaker names (model.speakers); pass ids directly")
        index = {name: i for i, name in enumerate(self.speakers)}
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            raise SpeechInputError(f"speaker(s) {unknown} were not in the training data; known: {', '.join(self.speakers)}")
        return torch.tensor([index[n] for n in names], dtype=torch.long)

    def _encode(self, feats: Tensor, lengths: Tensor | None) -> dict[str, Tensor]:
        feats = self._check_feats(feats)
        b, _, t = feats.shape
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=feats.device)
        lengths = lengths.to(feats.device).long()
        if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > t).any()):
            raise SpeechInputError(f"lengths must be (B,) = ({b},) with values in [1, {t}], got {lengths.tolist()}")
        even = lengths + lengths % 2
        # one replicated context frame on each side, plus one more at the end for odd T
        width = int(even.max()) + 2 * CONTEXT_FRAMES
        pos = torch.arange(width, device=feats.device)[None, :] - CONTEXT_FRAMES
        source = torch.minimum(pos.clamp_min(0), (lengths - 1)[:, None])
        x = torch.gather(feats, 2, source[:, None, :].expand(b, feats.shape[1], width))
        x = x * (pos < even[:, None] + CONTEXT_FRAMES)[:, None, :].to(x.dtype)
        z_e, latent_lengths = self.encoder(x, even)
        q = self.quantizer(z_e, _frame_mask(latent_lengths, z_e.shape[1]))
        return {"z_e": z_e, "z_q": q.z_q, "indices": q.indices, "lengths": latent_lengths, "frame_lengths": lengths}

    # ----- input checks --------------------------------------------------------------------
    def _check_feats(self, feats: Tensor) -> Tensor:
        if not torch.is_tensor(feats) or feats.ndim != 3 or feats.shape[1] != self.n_mels:
            shape = tuple(feats.shape) if torch.is_tensor(feats) else type(feats).__name__
            raise SpeechInputError(f"feats must be (B, n_mels={self.n_mels}, T) (channels first), got {shape}")
        if not torch.isfinite(feats).all():
            raise SpeechInputError("feats contain NaN/Inf values; check the feature extraction")
        return feats

    def _check_speaker(self, speaker: Tensor, feats: Tensor) -> Tensor:
        speaker = torch.as_tensor(speaker, device=feats.device).long().reshape(-1)
        if speaker.shape[0] != feats.shape[0]:
            raise SpeechInputError(f"need one speaker id per example: {speaker.shape[0]} ids for {feats.shape[0]} examples")
        if bool((speaker < 0).any()) or bool((speaker >= self.n_speakers).any()):
            raise SpeechInputError(f"speaker ids must lie in [0, {self.n_speakers}), got {sorted(set(speaker.tolist()))}")
        return speaker

    @staticmethod
    def _check_inner_frames(inner: int, inner_lengths: Tensor | None) -> None:
        if inner < 2 or inner % 2:
            raise SpeechInputError(
                f"training segments need an even number (>= 2) of frames between the {CONTEXT_FRAMES} context "
                f"frame(s) on each side (the encoder downsamples by 2), got {inner}"
            )
        if inner_lengths is not None and (bool((inner_lengths < 2).any()) or bool((inner_lengths % 2).any())):
            raise SpeechInputError(f"segment lengths minus context must be even and >= 2, got {inner_lengths.tolist()}")


@contextmanager
def _eval_mode(module: nn.Module):
    """``module`` in eval mode inside the block; its previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _options(node: Any) -> dict:
    from omegaconf import OmegaConf

    if node is None:
        return {}
    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)


def build_likelihood(spec: Any) -> Likelihood:
    """``{name: gaussian_fixed, sigma2: 0.1}`` -> a likelihood module (clear errors)."""
    spec = _options(spec)
    name = spec.pop("name", None)
    if name is None:
        raise ValueError(f"likelihood config needs a name; known: {', '.join(LIKELIHOODS.names())}")
    try:
        cls = LIKELIHOODS.get(str(name))
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    try:
        return cls(**spec)
    except TypeError as err:
        raise ValueError(f"likelihood {name!r} does not accept options {sorted(spec)}: {err}") from None


def build_quantizer_from_config(qcfg: Any) -> Quantizer:
    """``cfg.quantizer`` (name, num_codes, code_dim, options) -> a quantizer."""
    q = _options(qcfg)
    missing = [k for k in ("name", "num_codes", "code_dim") if q.get(k) is None]
    if missing:
        raise ValueError(f"quantizer config is missing {missing}")
    return build_quantizer(q["name"], num_codes=int(q["num_codes"]), code_dim=int(q["code_dim"]), **(q.get("options") or {}))


def check_data_compatibility(model_cfg: dict, data_cfg: dict) -> None:
    """Options of the speech batches that this model cannot train on: clear errors up front."""
    segment, context = data_cfg.get("segment_frames"), data_cfg.get("context_frames")
    if segment is not None and (int(segment) < 2 or int(segment) % 2):
        raise ValueError(f"data.segment_frames={segment}: the encoder downsamples by 2, so it must be an even number >= 2")
    if context is not None and int(context) != CONTEXT_FRAMES:
        raise ValueError(
            f"data.context_frames={context}: the speech model's unpadded first convolution consumes exactly "
            f"{CONTEXT_FRAMES} context frame on each side"
        )
    n_data, n_model = data_cfg.get("n_mels"), model_cfg.get("n_mels")
    if n_data is not None and n_model is not None and int(n_data) != int(n_model):
        raise ValueError(f"data.n_mels={n_data} but model.n_mels={n_model}")


@MODELS.register("speech_vqvae")
def build_speech_model(cfg: Any) -> SpeechVQVAE:
    m = _options(cfg.model)
    if "data" in cfg and cfg.data is not None:
        check_data_compatibility(m, _options(cfg.data))
    if m.get("n_speakers") is None:
        raise ValueError("model.n_speakers is not set; the trainer fills it from the training data's utt2spk")
    return SpeechVQVAE(
        quantizer=build_quantizer_from_config(cfg.quantizer),
        likelihood=build_likelihood(m["likelihood"]),
        n_speakers=int(m["n_speakers"]),
        n_mels=int(m.get("n_mels", 80)),
        encoder_channels=int(m.get("encoder_channels", 768)),
        norm=str(m.get("norm", "batch")),
        speaker_dim=int(m.get("speaker_dim", 64)),
        decoder_hidden=int(m.get("decoder_hidden", 128)),
        decoder_layers=int(m.get("decoder_layers", 2)),
        jitter=float(m.get("jitter", 0.5)),
        loss_normalization=str(m.get("loss_normalization", "example")),
        speakers=m.get("speakers"),
        features=_feature_info(cfg),
    )


def _feature_info(cfg: Any) -> dict | None:
    """What :meth:`SpeechVQVAE.summaries` needs to turn outputs into dB and audio."""
    if "preprocessing" not in cfg or cfg.preprocessing is None:
        return None
    from omegaconf import OmegaConf

    feats_dir = OmegaConf.select(cfg, "data.feats_dir", default=None) if OmegaConf.is_config(cfg) else None
    cmvn = str(Path(str(feats_dir)) / "cmvn.npz") if feats_dir else None
    return {"preprocessing": _options(cfg.preprocessing), "cmvn": cmvn}
