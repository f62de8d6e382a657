"""The `speechsq` command: one entry point, one sub-command per pipeline step.

Each sub-command lives in the module that does the work and exposes ``main(argv) -> int``;
this file only dispatches, importing the module lazily so `speechsq --help` is instant.

Errors the user can fix (:class:`speechsq.errors.SpeechsqError` and its subclasses, a
missing or unreadable file, a full disk) are printed as one line naming the file or field,
with exit status 2 (1 for a full disk); ``speechsq --debug <command>`` or
``SPEECHSQ_DEBUG=1`` shows the traceback instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from speechsq.errors import SpeechsqError, is_disk_full

# name -> (module, one-line help). Data flows top to bottom.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-corpus": ("speechsq.data_prep.embedded_corpus", "synthesise the embedded multi-speaker corpus (ZeroSpeech 2019 layout)"),
    "prepare-data": ("speechsq.data_prep.prepare", "make Kaldi data dirs for a corpus (zerospeech19, vctk)"),
    "validate-data-dir": ("speechsq.data_prep.kaldi_dir", "check a Kaldi data dir for inconsistencies"),
    "make-items": ("speechsq.data_prep.make_items", "an ABX item file from phone alignments (when the corpus has none)"),
    "compute-feats": ("speechsq.features.compute", "compute log-Mel features for a data dir (feats.scp + ark)"),
    "train": ("speechsq.training.cli", "train a model (hydra overrides: experiment=mini quantizer=sq_gauss1 ...)"),
    "export-model": ("speechsq.training.export", "write a shareable model (safetensors + config) from a checkpoint"),
    "extract": ("speechsq.eval.extract", "extract units / ZeroSpeech submission from a checkpoint"),
    "abx": ("speechsq.eval.abx", "ABX discriminability of features or units on an item file"),
    "evaluate": ("speechsq.eval.evaluate", "MSE (dB^2), bitrate, codebook statistics of a checkpoint"),
    "report": ("speechsq.eval.report", "collect results.json / results.md tables over runs"),
    "resynthesize": ("speechsq.eval.resynthesize", "speak utterances or units in training speakers' voices (wavs, ZeroSpeech synthesis)"),
    "synthesis-measures": ("speechsq.eval.speech_measures", "MCD/LSD of resynthesis, speaker match and ABX of voice conversion"),
    "plots": ("speechsq.eval.plots", "training curves and reconstruction figure (PNG) of an experiment"),
    "extract-codes": ("speechsq.data.code_maps", "encode an image split into code maps (to train a PixelCNN prior on)"),
    "image-fid": ("speechsq.eval.image_fid", "SQ-VAE Table 2 for an image model: rFID, generation, Neighbor-k, interpolation"),
}

DEBUG_ENV = "SPEECHSQ_DEBUG"


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: speechsq [--debug] <command> [options]   (speechsq <command> --help for details)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", f"--debug (or {DEBUG_ENV}=1): show the full traceback of an error instead of one line"]
    return "\n".join(lines)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def user_error_message(err: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit status) for an error the user can fix; None for a bug."""
    if is_disk_full(err):
        path = getattr(err, "path", None) or getattr(err, "filename", None)
        text = str(err) if "No space left on device" in str(err) else f"No space left on device: {path or err}"
        return text, 1
    if isinstance(err, SpeechsqError):
        return str(err), err.exit_code
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        if err.filename is not None:
            return f"{err.strerror or err}: {err.filename}", 2
        return str(err), 2
    return None


def run_command(name: str, argv: list[str], debug: bool = False) -> int:
    """Run one sub-command's ``main(argv)`` with the one-line error policy."""
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(argv) or 0)
    except KeyboardInterrupt:
        print(f"speechsq {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the policy below re-raises bugs
        known = user_error_message(err)
        if known is None or debug:
            raise
        message, status = known
        message = " ".join(message.split("\n")[0:1]) + (" (more: --debug)" if "\n" in message.strip() else "")
        print(f"speechsq {name}: error: {message}", file=sys.stderr)
        return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled()
    while argv and argv[0] == "--debug":
        debug = True
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"speechsq: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run_command(name, rest, debug)


if __name__ == "__main__":
    sys.exit(main())
