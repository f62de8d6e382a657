"""VCTK 0.80 layout (Veaux et al., 2017)::

    wav48/<spk>/<spk>_<nnn>.wav     109 speakers, 48 kHz mono
    txt/<spk>/<spk>_<nnn>.txt       transcripts (p315 has none in the real corpus)

SQ-VAE (App. E.2.1) uses 90 % of the utterances for training and 10 % for testing. The split
here is deterministic and stratified: each speaker's utterance ids are sorted, shuffled with a
generator seeded by the speaker id and the first ``round(0.1 n)`` go to ``test``. It depends on
file names only, so a file refused later for bad audio never moves other files between sets.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from speechsq.data_prep.corpus import CORPORA, CorpusFile, CorpusLayout, SkippedFile, SubsetListing, require_dir

FILE_NAME = re.compile(r"(?P<spk>[A-Za-z0-9]+)_(?P<num>[0-9]+)\.wav")  # fullmatch; ASCII classes, not \d
TEST_FRACTION = 0.1


def speaker_seed(speaker: str) -> int:
    """A seed that depends only on the speaker id (stable across Python runs, unlike hash())."""
    return int.from_bytes(hashlib.sha256(speaker.encode()).digest()[:8], "little")


def split_utterances(speaker: str, utts: list[str], test_fraction: float = TEST_FRACTION) -> tuple[list[str], list[str]]:
    """Deterministic (train, test) split of one speaker's utterances."""
    order = sorted(utts)
    perm = np.random.default_rng(speaker_seed(speaker)).permutation(len(order))
    n_test = int(round(test_fraction * len(order)))
    test = {order[i] for i in perm[:n_test]}
    return [u for u in order if u not in test], sorted(test)


def read_transcript(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
    return text or None


@CORPORA.register("vctk")
class VCTK080(CorpusLayout):
    name = "vctk"
    sample_rate = 48000
    frame_shift = 0.0125

    def list_subsets(self, root: Path) -> dict[str, SubsetListing]:
        root = Path(root)
        wav_root = require_dir(root / "wav48", "--root must be the VCTK 0.80 folder holding wav48/ and txt/")
        train = SubsetListing("train", is_training=True)
        test = SubsetListing("test")
        for spk_dir in sorted(p for p in wav_root.iterdir() if p.is_dir()):
            speaker = spk_dir.name
            files: dict[str, CorpusFile] = {}
            for path in sorted(spk_dir.iterdir()):
                if path.is_dir() or path.suffix.lower() != ".wav":
                    continue
                match = FILE_NAME.fullmatch(path.name)
                if match is None or match["spk"] != speaker:
                    train.skipped.append(SkippedFile(str(path), "bad-name", f"expected {speaker}_<nnn>.wav"))
                    continue
                utt = path.name[: -len(".wav")]
                text = read_transcript(root / "txt" / speaker / f"{utt}.txt")
                files[utt] = CorpusFile(utt, speaker, str(path.resolve()), text)
            train_utts, test_utts = split_utterances(speaker, list(files))
            train.files += [files[u] for u in train_utts]
            test.files += [files[u] for u in test_utts]
        return {"train": train, "test": test}
