"""A tiny speech model trained for a few steps by the real trainer, for the API, vocoder,
resynthesis and measure tests (imported by those test modules; not a test itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_MELS = 20
SPEAKERS = ("V001", "V002")


def speech_like(seconds: float = 1.0, sample_rate: int = 16000, seed: int = 0, f0: float = 120.0) -> np.ndarray:
    """A gliding harmonic tone with a syllable-rate envelope and a little noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = f0 + 0.5 * f0 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.0 * t + seed)
    return 0.25 * voiced * envelope + 0.01 * rng.standard_normal(len(t))


def train_tiny_model(root: Path, quantizer: str = "vq_ema", steps: int = 30, extra: list[str] | None = None) -> Path:
    """Features of speech-like signals for two speakers, then ``steps`` trainer steps of a tiny
    model (20 mels, 16 channels, 8 codes); returns ``checkpoints/last.pt``."""
    from speechsq.features import build_pipeline
    from speechsq.features.store import ArkWriter
    from speechsq.training import build_run, compose_config

    pipeline = build_pipeline("zerospeech19")
    pipeline = type(pipeline)({**pipeline.cfg, "n_mels": N_MELS})
    feats_dir, data_dir = root / "feats", root / "data"
    data_dir.mkdir(parents=True)
    writer = ArkWriter(feats_dir)
    utt2spk = {}
    for s, speaker in enumerate(SPEAKERS):
        for k in range(3):
            utt = f"{speaker}_{k}"
            writer.write(utt, pipeline.from_waveform(speech_like(1.0, seed=10 * s + k, f0=110.0 + 90.0 * s)))
            utt2spk[utt] = speaker
    writer.commit()
    (data_dir / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(utt2spk.items())))
    cfg = compose_config([
        "experiment=mini", f"quantizer={quantizer}", f"preprocessing.n_mels={N_MELS}", "model.encoder_channels=16",
        "model.decoder_hidden=16", "model.speaker_dim=4", "quantizer.num_codes=8", "quantizer.code_dim=4",
        f"data.feats_dir={feats_dir}", f"data.data_dir={data_dir}", "data.batch_size=4", f"training.steps={steps}",
        f"training.checkpoint_every={steps}", f"training.log_every={steps}", "training.progress=false",
        "training.lr=0.003", f"exp_dir={root / 'exp'}", *(extra or []),
    ])
    build_run(cfg).fit()
    return root / "exp" / "checkpoints" / "last.pt"


_CACHE: dict[str, Path] = {}


def tiny_checkpoint(quantizer: str = "vq_ema") -> Path:
    """One trained tiny checkpoint per quantizer and test session (a temporary folder removed
    at exit), shared by every test module that needs one."""
    if quantizer not in _CACHE:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix=f"speechsq-tiny-{quantizer}-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _CACHE[quantizer] = train_tiny_model(root, quantizer)
    return _CACHE[quantizer]
