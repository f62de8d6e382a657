"""Corpus layouts -> Kaldi data dirs, audio checks, ABX items, and the embedded espeak-ng corpus.

Import as ``speechsq.data_prep`` (installed from the top-level ``data_prep/`` folder).
"""
