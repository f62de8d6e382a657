"""``speechsq make-items``: an ABX item file from phone alignments.

    speechsq make-items --ali data/test/ali --utt2spk data/test/utt2spk --out data/test/items

For a corpus whose ABX item file is not at hand (the ZeroSpeech 2019 test item file comes
with the challenge's evaluation data, not with the audio) but whose test set has phone
alignments (``<utt> <onset-s> <offset-s> <phone>`` per line, ``SIL`` for silence, e.g. from a
forced aligner). One item per phone whose two neighbours are phones (not silence), in the
libri-light format that ``speechsq abx`` reads; the speaker comes from ``utt2spk``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from speechsq.data_prep.alignments import items_from_alignments, read_alignments, write_items
from speechsq.data_prep.kaldi_dir import read_table
from speechsq.errors import SpeechsqError


def make_items(ali: str, utt2spk: str, out: str) -> int:
    alignments = read_alignments(ali)
    speakers = read_table(utt2spk)
    unknown = sorted(set(alignments) - set(speakers))
    if unknown:
        raise SpeechsqError(f"{len(unknown)} utterance(s) of {ali} are not in {utt2spk} (e.g. {', '.join(unknown[:3])})")
    items = items_from_alignments(alignments, speakers)
    if not items:
        raise SpeechsqError(f"{ali}: no phone with two non-silence neighbours, so no ABX item")
    write_items(out, items)
    return len(items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechsq make-items", description=__doc__.split("\n\n")[2].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ali", required=True, help="phone alignments: <utt> <onset-s> <offset-s> <phone> per line")
    p.add_argument("--utt2spk", required=True, help="utt2spk of the same utterances (Kaldi data dir)")
    p.add_argument("--out", required=True, help="item file to write")
    args = p.parse_args(argv)
    n = make_items(args.ali, args.utt2spk, args.out)
    from speechsq.data_prep.alignments import read_items

    counts = Counter(item.speaker for item in read_items(args.out))
    print(f"{n} items, {len(counts)} speakers -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
