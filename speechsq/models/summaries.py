"""TensorBoard media of the speech model: what a reconstruction looks and sounds like.

The trainer calls ``model.summaries(batch)`` at every checkpoint (when the model has the
method) and writes what comes back::

    {"images": {name: (H, W, 3) uint8},
     "audio":  {name: (1-D float32 waveform, sample_rate)},
     "text":   {name: markdown str}}

For the first example of the batch (keys ``original``, ``reconstruction``, ``conversion``): the input log-Mel, its deterministic reconstruction in
its own voice and a conversion into the next training speaker's voice, as one spectrogram
figure in dB with a colourbar, the same three through the Griffin-Lim vocoder, and a line
giving the speakers and the reconstruction MSE in dB² (all frames of the segment).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from speechsq.errors import SpeechsqError

log = logging.getLogger(__name__)

GRIFFIN_LIM_ITERATIONS = 32  # a cheap listening check; speechsq resynthesize uses more


def speech_summaries(model, batch: dict[str, torch.Tensor]) -> dict[str, dict]:
    from speechsq.eval.plots import ImagePanel, draw_images, feature_db, figure_to_array, mel_band_ticks

    x = batch["feats"][:1].detach().float()
    lengths = batch.get("lengths")
    if lengths is not None:
        x = x[:, :, : int(lengths[0])]
    own = int(torch.as_tensor(batch["speaker"]).reshape(-1)[0])
    names = model.speakers or [str(i) for i in range(model.n_speakers)]
    outputs = {"original": x[0].cpu(), "reconstruction": model.reconstruct(x, None, torch.tensor([own]))[0].cpu()}
    titles = {"original": f"input ({names[own]})", "reconstruction": f"reconstruction ({names[own]}'s voice)"}
    if model.n_speakers > 1:
        other = (own + 1) % model.n_speakers
        outputs["conversion"] = model.reconstruct(x, None, torch.tensor([other]))[0].cpu()
        titles["conversion"] = f"conversion to {names[other]}'s voice"

    pre = (model.features or {}).get("preprocessing")
    cmvn = _cmvn((model.features or {}).get("cmvn"))
    db = feature_db(pre, cmvn) if pre else None
    frame_shift = float(pre["hop_length"]) / float(pre["sample_rate"]) if pre else 1.0
    arrays = {k: v.numpy().astype(np.float64) for k, v in outputs.items()}
    shown = {k: db.to_db(v) if db else v for k, v in arrays.items()}
    lo, hi = float(shown["original"].min()), float(shown["original"].max())
    colour = db.label if db else "log-Mel feature value"
    panels = [
        ImagePanel(titles[name], image, frame_shift, lo, hi, colour, mel_band_ticks(pre) if pre else [],
                   "frequency (kHz, mel scale)" if pre else "mel band")
        for name, image in shown.items()
    ]
    if not pre:
        for panel in panels:
            panel.title += " (x: frames)"
    error = (f"{db.mse_db2(arrays['reconstruction'], arrays['original']):.2f} dB²" if db
             else f"{float(np.mean((arrays['reconstruction'] - arrays['original']) ** 2)):.4g} (feature units²)")
    text = (f"{', '.join(titles.values())}; reconstruction MSE {error} over {x.shape[-1]} frames of one training "
            "segment; audio through Griffin-Lim (the 'original' too: the segment's log-Mel, not its waveform)")
    figure = draw_images([panels], f"training segment of speaker {names[own]}: input, reconstruction, conversion")
    out: dict[str, dict] = {"images": {"spectrograms": figure_to_array(figure)}, "audio": {}, "text": {"reconstruction": text}}
    if pre:
        out["audio"] = _audio(pre, cmvn, arrays)
    return out


def _cmvn(path: str | None):
    from speechsq.features import Cmvn

    return Cmvn.load(path) if path and Path(path).is_file() else None


def _audio(pre: dict, cmvn, arrays: dict[str, np.ndarray]) -> dict:
    from speechsq.vocoders import build_vocoder

    try:
        vocoder = build_vocoder("griffin_lim", pre, cmvn, n_iter=GRIFFIN_LIM_ITERATIONS)
        return {name: (vocoder(torch.from_numpy(a)).numpy(), vocoder.sample_rate) for name, a in arrays.items()}
    except SpeechsqError as err:  # e.g. standardised features without their cmvn.npz: images only
        log.warning("no audio summaries: %s", err)
        return {}
