"""ZeroSpeech 2019 English layout (Dunbar et al., 2019), as used by van Niekerk et al. (2020).

``--root`` is the ``english/`` folder::

    train/voice/            V001_*.wav, V002_*.wav   target voices
    train/unit/             S015_*.wav, ...          100 other speakers
    train/parallel/source/  unit speakers reading sentences ...
    train/parallel/voice/   ... that V001/V002 read too (same 10-digit file ids)
    test/                   24 unseen speakers (ABX and bitrate)
    alignments/<set>.ali, alignments/test.item       optional (the embedded corpus writes them);
                                                     copied to data/<set>/ali and data/test/items

Files are ``<SPK>_<10 digits>.wav`` (16 kHz, mono, 16 bit); the speaker is the 4-character prefix.
Sets, as in the reference systems (SQ-VAE App. E.2.1): ``train`` = voice + unit,
``parallel`` = train/parallel/voice (MSE evaluation), ``parallel_source`` = train/parallel/source,
``test`` = test (ABX, bitrate).
"""

from __future__ import annotations

import re
from pathlib import Path

from speechsq.data_prep.corpus import CORPORA, CorpusFile, CorpusLayout, SkippedFile, SubsetListing, require_dir

# Explicit ASCII classes: ``\d`` (and str.isdigit) also accept Arabic-Indic and other Unicode digits.
FILE_NAME = re.compile(r"(?P<spk>[A-Za-z0-9]{4})_(?P<num>[0-9]{10})\.wav")  # used with fullmatch

# set name -> folders (relative to the english/ root) that make it up
SUBSETS: dict[str, tuple[str, ...]] = {
    "train": ("train/voice", "train/unit"),
    "parallel": ("train/parallel/voice",),
    "parallel_source": ("train/parallel/source",),
    "test": ("test",),
}
TRAINING_SUBSETS = {"train"}


def abx_extras(set_name: str) -> dict[str, str]:
    """Optional files copied into ``data/<set>/``: data-dir name -> path under the root."""
    extras = {"ali": f"alignments/{set_name}.ali"}
    if set_name == "test":
        extras["items"] = "alignments/test.item"
    return extras


def parse_file_name(name: str) -> tuple[str, str] | None:
    """``V001_0123456789.wav`` -> (``V001``, ``V001_0123456789``); None if it does not parse."""
    match = FILE_NAME.fullmatch(name)
    if match is None:
        return None
    return match["spk"], name[: -len(".wav")]


def list_folder(folder: Path, listing: SubsetListing) -> None:
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.suffix.lower() != ".wav":
            continue  # README, vad files etc. are not utterances
        parsed = parse_file_name(path.name)
        if parsed is None:
            listing.skipped.append(SkippedFile(str(path), "bad-name", "expected <SPK>_<10 digits>.wav"))
            continue
        speaker, utt = parsed
        listing.files.append(CorpusFile(utt, speaker, str(path.resolve())))


@CORPORA.register("zerospeech19")
class ZeroSpeech2019(CorpusLayout):
    name = "zerospeech19"
    sample_rate = 16000
    frame_shift = 0.010

    def list_subsets(self, root: Path) -> dict[str, SubsetListing]:
        root = Path(root)
        require_dir(root, "--root must be the english/ folder of ZeroSpeech 2019")
        subsets = {}
        for name, folders in SUBSETS.items():
            listing = SubsetListing(name, is_training=name in TRAINING_SUBSETS)
            for folder in folders:
                list_folder(require_dir(root / folder, f"ZeroSpeech 2019 set {name!r}"), listing)
            for dest, rel in abx_extras(name).items():
                if (root / rel).is_file():
                    listing.extras[dest] = str(root / rel)
            subsets[name] = listing
        return subsets
