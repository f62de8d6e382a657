"""Print (and save) the results table of recipes/images/run.sh stage 3.

    python local/results_table.py --split test vq=exp/images_digits/vq/results_test.json sq_gauss1=...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# column -> (header, format); a column is shown when any run has it
COLUMNS = {
    "mse_x1e3": ("MSE (x1e3)", "{:.2f}"),
    "pixel_error": ("pixel error (%)", "{:.2f}"),
    "miou": ("mIoU (%)", "{:.1f}"),
    "perplexity": ("perplexity", "{:.1f}"),
    "active_codes": ("codes used", "{:d}"),
}
PROBES = {"clustering_accuracy": ("k-means acc (%)", "{:.1f}"), "clustering_nmi": ("NMI", "{:.3f}"), "classification_accuracy": ("linear acc (%)", "{:.1f}")}


def table(rows: dict[str, dict]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in rows.values())]
    probe_cols = [c for c in PROBES if any(c in (r.get("probes") or {}) for r in rows.values())]
    header = ["quantizer"] + [COLUMNS[c][0] for c in cols] + [PROBES[c][0] for c in probe_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, r in rows.items():
        cells = [name] + [COLUMNS[c][1].format(r[c]) if c in r else "-" for c in cols]
        cells += [PROBES[c][1].format(r["probes"][c]) if c in (r.get("probes") or {}) else "-" for c in probe_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=results.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    rows = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            print(f"results_table.py: expected NAME=existing.json, got {item!r}", file=sys.stderr)
            return 2
        rows[name] = json.loads(Path(path).read_text())
    first = next(iter(rows.values()))
    text = f"{first['dataset']} / {args.split} ({first['images']} images, {first['pixels']} pixels)\n\n{table(rows)}"
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
