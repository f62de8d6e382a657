"""Evaluation and unit extraction (installed as ``speechsq.eval``; see docs/ARCHITECTURE.md section 8).

abx          ABX discriminability (libri-light / ZeroSpeech definition; ``speechsq abx``)
abx_data     item files, feature files, input checks, item frame slicing, counted skips
abx_cells    ABX cells in the reference's order with its seeded draws; aggregation
abx_random   Python's random.sample replayed in compiled code (the reference's draws)
abx_distance frame distances (compiled and torch), the arc cosine polynomial
abx_numba    CPU backend: compiled kernels scoring whole cells
abx_torch    device backend: batched torch alignments (CUDA; CPU in tests)
abx_synthetic synthetic ABX tasks for tests and benchmarks
dtw          path-normalised DTW and edit distance (compiled, batched torch, naive)
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
