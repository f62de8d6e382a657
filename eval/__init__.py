"""Evaluation and unit extraction (installed as ``speechsq.eval``; see docs/ARCHITECTURE.md section 8).

abx          ABX discriminability (libri-light / ZeroSpeech definition; ``speechsq abx``)
abx_data     item files, feature files, item frame slicing, edge-case accounting
dtw          batched path-normalised DTW and edit distance
bitrate      ZeroSpeech 2019 bitrate N * H / D
codebook     perplexity, active codes, usage histogram
mse          spectrogram MSE in dB^2 (SQ-VAE Tables 3/9)
probes       k-means + Hungarian accuracy, NMI, linear / phone / speaker probes
extract      units, codes and the ZeroSpeech 2019 submission tree (``speechsq extract``)
evaluate     one run's metrics.json (``speechsq evaluate``)
report       results.json / results.md over quantizers and seeds (``speechsq report``)
plots        training curves, reconstruction figure (``speechsq plots``)
resynthesize units / wavs back to speech in training voices (``speechsq resynthesize``)
speech_measures  MCD / LSD of resynthesis, speaker match and ABX of conversion (``speechsq synthesis-measures``)
"""
