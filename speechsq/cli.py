"""The `speechsq` command: one entry point, one sub-command per pipeline step.

Each sub-command lives in the module that does the work and exposes ``main(argv) -> int``;
this file only dispatches, importing the module lazily so `speechsq --help` is instant.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Data flows top to bottom.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-corpus": ("speechsq.data_prep.embedded_corpus", "synthesise the embedded multi-speaker corpus (ZeroSpeech 2019 layout)"),
    "prepare-data": ("speechsq.data_prep.prepare", "make Kaldi data dirs for a corpus (zerospeech19, vctk)"),
    "validate-data-dir": ("speechsq.data_prep.kaldi_dir", "check a Kaldi data dir for inconsistencies"),
    "compute-feats": ("speechsq.features.compute", "compute log-Mel features for a data dir (feats.scp + ark)"),
    "train": ("speechsq.training.cli", "train a model (hydra overrides: experiment=mini quantizer=sq_gauss1 ...)"),
    "extract": ("speechsq.eval.extract", "extract units / ZeroSpeech submission from a checkpoint"),
    "abx": ("speechsq.eval.abx", "ABX discriminability of features or units on an item file"),
    "evaluate": ("speechsq.eval.evaluate", "MSE (dB^2), bitrate, codebook statistics of a checkpoint"),
    "report": ("speechsq.eval.report", "collect results.json / results.md tables over runs"),
    "plots": ("speechsq.eval.plots", "reconstruction figure and training curves (PNG) of an experiment"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: speechsq <command> [options]   (speechsq <command> --help for details)", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"speechsq: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
