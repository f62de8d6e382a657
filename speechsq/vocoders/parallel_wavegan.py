"""A user-trained neural vocoder of kan-bayashi/ParallelWaveGAN (Parallel WaveGAN, MelGAN,
multi-band MelGAN, HiFi-GAN, StyleMelGAN generators), through the ``parallel-wavegan`` package.

The VCTK features of speechsq are that package's own recipe features (``logmelfilterbank``
at 24 kHz, hop 300, 80 bands 80-7600 Hz), so a vocoder trained with its recipe on the same
audio fits directly. What the adapter does to the model's log-Mel, per frame:

1. undo speechsq's normalisation (training-set cmvn, dB) -> ``log_base`` log of the mel
   magnitude, the vocoder's input before its own normalisation;
2. standardise with the vocoder's ``stats.h5`` / ``stats.npy`` (mean, scale);
3. ``generator.inference(c, normalize_before=False)``.

The vocoder's analysis settings (``config.yml``: sampling_rate, fft_size, hop_size,
win_length, num_mels, fmin, fmax, window) must equal the model's preprocessing; a mismatch
is an error that lists the differing keys. Features of pre-emphasised audio (the
ZeroSpeech 2019 pipeline) are refused: their spectral tilt differs from what such a
vocoder was trained on; use ``griffin_lim`` there, or retrain with the ``vctk`` pipeline.

Files are data, not code: the checkpoint is read with ``torch.load(weights_only=True)``
(tensors and plain containers only), the config with ``yaml.safe_load`` and ``.npy``
statistics with ``allow_pickle=False``. A checkpoint that holds other Python objects needs
``trust_checkpoint=True`` (``--trust-vocoder-checkpoint``): only for files you made.

Installing (the ``vocoder`` extra): parallel-wavegan 0.6.1's ``setup.py`` imports ``pip``, so
its source distribution does not build in pip's isolated build environment; install it with
``pip install wheel && pip install --no-build-isolation "parallel-wavegan>=0.6.1,<0.7"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from speechsq.vocoders.base import VOCODERS, Vocoder
from speechsq.vocoders.inverse import VocoderError

INSTALL_HINT = (
    'pip install wheel && pip install --no-build-isolation "parallel-wavegan>=0.6.1,<0.7" '
    "(the `vocoder` extra; its setup.py needs pip inside the build environment)"
)

LOG_BASES = {10.0: np.log(10.0), 2.0: np.log(2.0), None: 1.0}  # log_base -> ln(base)


def import_parallel_wavegan():
    """``parallel_wavegan.models`` with a clear error when the extra is missing.

    parallel-wavegan 0.6.1 imports ``scipy.signal.kaiser``, which SciPy 1.13 moved to
    ``scipy.signal.windows.kaiser`` only; the alias is restored before the import (the same
    function, nothing else is touched).
    """
    import scipy.signal

    if not hasattr(scipy.signal, "kaiser"):
        from scipy.signal.windows import kaiser

        scipy.signal.kaiser = kaiser
    try:
        import parallel_wavegan.models as models
    except ImportError as err:
        raise VocoderError(f"the parallel_wavegan vocoder needs the parallel-wavegan package ({err}); {INSTALL_HINT}") from None
    return models


def read_vocoder_config(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise VocoderError(f"vocoder config {path} does not exist (the config.yml written next to the checkpoint by parallel-wavegan-train)")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise VocoderError(f"vocoder config {path} is not plain YAML (python objects are not loaded): {err}") from None
    if not isinstance(config, dict) or "generator_params" not in config:
        raise VocoderError(f"vocoder config {path} has no generator_params: not a parallel-wavegan config.yml")
    return config


def read_stats(path: Path, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the vocoder's feature normalisation from ``stats.h5`` or ``stats.npy``."""
    if not path.is_file():
        raise VocoderError(f"vocoder statistics {path} do not exist (stats.h5 / stats.npy of parallel-wavegan-compute-statistics)")
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            mean, scale = np.asarray(f["mean"]), np.asarray(f["scale"])
    elif path.suffix == ".npy":
        try:
            stats = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise VocoderError(f"{path}: {err}") from None
        if stats.ndim != 2 or stats.shape[0] != 2:
            raise VocoderError(f"{path}: expected a (2, n_mels) array of mean and scale, got shape {stats.shape}")
        mean, scale = stats[0], stats[1]
    else:
        raise VocoderError(f"vocoder statistics {path}: expected a .h5 or .npy file")
    mean, scale = mean.reshape(-1).astype(np.float64), scale.reshape(-1).astype(np.float64)
    if mean.shape != (n_mels,) or scale.shape != (n_mels,):
        raise VocoderError(f"{path}: statistics have {mean.shape[0]} dims, the features have {n_mels}")
    return mean, scale


def load_generator_state(path: Path, trust_checkpoint: bool) -> dict[str, Tensor]:
    """The generator's state dict of a parallel-wavegan checkpoint, without unpickling code
    unless ``trust_checkpoint``."""
    if not path.is_file():
        raise VocoderError(f"vocoder checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        if trust_checkpoint:
            raise VocoderError(f"vocoder checkpoint {path} cannot be read: {err}") from None
        raise VocoderError(
            f"vocoder checkpoint {path} cannot be read as plain weights (it may hold Python objects, whose "
            f"unpickling can run code): {str(err).splitlines()[0]}. If you made this file yourself, pass "
            "trust_checkpoint=True (--trust-vocoder-checkpoint)"
        ) from None
    generator = state.get("model", {}).get("generator") if isinstance(state, dict) else None
    if not isinstance(generator, dict):
        raise VocoderError(f"{path} is not a parallel-wavegan checkpoint (no model/generator weights)")
    return generator


def check_analysis(config: dict, pipeline) -> None:
    """The vocoder's STFT/mel settings must be the features' own."""
    ours = {
        "sampling_rate": pipeline.sample_rate,
        "fft_size": pipeline.stft.n_fft,
        "hop_size": pipeline.hop_length,
        "win_length": pipeline.stft.win_length,
        "num_mels": pipeline.n_mels,
        "fmin": float(pipeline.cfg["fmin"]),
        "fmax": float(pipeline.cfg["fmax"]),
    }
    defaults = {"win_length": config.get("fft_size"), "fmin": 0.0, "fmax": (config.get("sampling_rate") or 0) / 2}
    differ = []
    for key, value in ours.items():
        theirs = config.get(key)
        theirs = defaults.get(key) if theirs is None else theirs
        if theirs is None or float(theirs) != float(value):
            differ.append(f"{key}: vocoder {theirs}, features {value}")
    window = config.get("window", "hann")
    if window != "hann":
        differ.append(f"window: vocoder {window}, features hann")
    if differ:
        raise VocoderError("the vocoder was trained on a different analysis than the model's features (" + "; ".join(differ) + ")")


@VOCODERS.register("parallel_wavegan")
class ParallelWaveGANVocoder(Vocoder):
    name = "parallel_wavegan"

    def __init__(
        self,
        inverse,
        device="cpu",
        checkpoint: str | Path | None = None,
        config: str | Path | None = None,
        stats: str | Path | None = None,
        trust_checkpoint: bool = False,
        generator_factory: Callable[..., torch.nn.Module] | None = None,
    ):
        super().__init__(inverse, device)
        if checkpoint is None:
            raise VocoderError("the parallel_wavegan vocoder needs checkpoint=PATH (a parallel-wavegan checkpoint-*steps.pkl you trained)")
        if getattr(inverse, "preemph", 0.0):
            raise VocoderError(
                "these features are of pre-emphasised audio (zerospeech19 pipeline); a parallel-wavegan vocoder "
                "is trained on plain audio: use the griffin_lim vocoder, or features of the vctk pipeline"
            )
        checkpoint = Path(checkpoint)
        self.config = read_vocoder_config(Path(config) if config else checkpoint.parent / "config.yml")
        check_analysis(self.config, inverse.pipeline)
        log_base = self.config.get("log_base", 10.0)
        if log_base is not None:
            log_base = float(log_base)
        if log_base not in LOG_BASES:
            raise VocoderError(f"unsupported log_base {log_base} in the vocoder config (10, 2 or null)")
        self.ln_base = LOG_BASES[log_base]
        if stats is None:
            stats = next((p for p in (checkpoint.parent / "stats.h5", checkpoint.parent / "stats.npy") if p.is_file()),
                         checkpoint.parent / "stats.h5")
        self.mean, self.scale = read_stats(Path(stats), inverse.n_mels)
        weights = load_generator_state(checkpoint, trust_checkpoint)
        self.generator = self._build_generator(generator_factory)
        try:
            self.generator.load_state_dict(weights)
        except RuntimeError as err:
            raise VocoderError(f"{checkpoint}: generator weights do not fit the config's generator_params: {str(err).splitlines()[0]}") from None
        if hasattr(self.generator, "remove_weight_norm"):
            self.generator.remove_weight_norm()  # inference only, as parallel-wavegan-decode does
        self.generator.to(self.device).eval()

    def _build_generator(self, factory) -> torch.nn.Module:
        params: dict[str, Any] = dict(self.config["generator_params"])
        # parallel-wavegan's own loader renames this historical typo (its issue #295)
        params = {k.replace("upsample_kernal_sizes", "upsample_kernel_sizes"): v for k, v in params.items()}
        kind = self.config.get("generator_type", "ParallelWaveGANGenerator")
        if factory is None:
            models = import_parallel_wavegan()
            factory = getattr(models, kind, None)
            if factory is None:
                raise VocoderError(f"parallel-wavegan has no generator {kind!r}")
        generator = factory(**params)
        if int(params.get("out_channels", 1)) > 1:  # multi-band: the sub-bands are merged by a PQMF
            from parallel_wavegan.layers import PQMF

            generator.pqmf = PQMF(subbands=int(params["out_channels"]), **self.config.get("pqmf_params", {}))
        return generator

    def vocoder_input(self, feats: Tensor) -> Tensor:
        """(n_mels, T) model features -> (T, n_mels) standardised log-mel the generator expects."""
        mel = self.inverse.to_mel(feats)  # float64 magnitudes, floored like the features
        log_mel = torch.log(mel) / self.ln_base
        mean = torch.as_tensor(self.mean, device=mel.device)[:, None]
        scale = torch.as_tensor(self.scale, device=mel.device)[:, None]
        return ((log_mel - mean) / scale).T.to(torch.float32).contiguous()

    def synthesize(self, feats: Tensor) -> np.ndarray:
        wav = self.generator.inference(self.vocoder_input(feats), normalize_before=False)
        return wav.reshape(-1).float().cpu().numpy()
