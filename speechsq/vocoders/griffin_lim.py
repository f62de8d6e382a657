"""Griffin-Lim: the vocoder that needs no training and no download (the default).

The mel magnitudes are mapped back to STFT magnitudes by non-negative least squares
(:class:`~speechsq.vocoders.inverse.MelToLinear`), and the phase is estimated with
torchaudio's fast Griffin-Lim (Perraudin et al. 2013, momentum 0.99) using the features' own
STFT: same ``n_fft``, window (periodic Hann of ``win_length``, centred), hop and centred
frames. The output has ``hop * (frames - 1)`` samples, the length whose analysis gives back
exactly ``frames`` frames. The random initial phase is drawn from a generator seeded with
``seed``, so a call is deterministic. Expect intelligible but "phasey" speech; a neural
vocoder (:mod:`speechsq.vocoders.parallel_wavegan`) sounds far better when one is at hand.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from speechsq.vocoders.base import VOCODERS, Vocoder


@VOCODERS.register("griffin_lim")
class GriffinLimVocoder(Vocoder):
    name = "griffin_lim"

    def __init__(self, inverse, device="cpu", n_iter: int = 64, momentum: float = 0.99, seed: int = 0):
        super().__init__(inverse, device)
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.n_iter, self.momentum, self.seed = int(n_iter), float(momentum), int(seed)

    def synthesize(self, feats: Tensor) -> np.ndarray:
        import torchaudio

        inv = self.inverse
        magnitude = inv.to_linear(feats).to(torch.float32)
        griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=inv.n_fft, n_iter=self.n_iter, win_length=inv.win_length, hop_length=inv.hop_length,
            power=1.0, momentum=self.momentum, length=inv.hop_length * (feats.shape[1] - 1), rand_init=True,
        ).to(self.device)
        devices = []
        if self.device.type == "cuda":  # fork_rng takes device indices
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            wav = griffin_lim(magnitude)
        return inv.finish(wav.cpu().numpy())
