"""speechsq: discrete acoustic units with any quantizer, one trainer, ZeroSpeech scoring."""

__version__ = "0.1.0"
