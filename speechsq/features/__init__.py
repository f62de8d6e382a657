"""Log-Mel feature pipelines (the hydra ``preprocessing`` group) and feature directories.

>>> from speechsq.features import build_pipeline, load_features, FeatureReader
>>> pipeline = build_pipeline("zerospeech19")          # or build_pipeline(cfg.preprocessing)
>>> feats = pipeline("utt.wav")                        # (frames, 80) float32
>>> train = FeatureReader("feats/train")               # lazy utt -> (frames, n_mels)
>>> test = require_features("feats/test", "data/test")  # complete, and of data/test: else one-line error
"""

from speechsq.features.cmvn import Cmvn
from speechsq.features.logmel import (
    PIPELINES,
    FeatureError,
    Featurized,
    LogMelPipeline,
    build_pipeline,
    load_preprocessing_config,
)
from speechsq.features.store import (
    FeatureReader,
    FeatureStoreError,
    NonFiniteFeaturesError,
    load_features,
    require_features,
)

__all__ = [
    "PIPELINES", "Cmvn", "FeatureError", "FeatureReader", "FeatureStoreError", "Featurized", "LogMelPipeline",
    "NonFiniteFeaturesError", "build_pipeline", "load_features", "load_preprocessing_config", "require_features",
]
