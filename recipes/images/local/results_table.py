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


def read_runs(items: list[str], prog: str) -> dict[str, dict] | None:
    """NAME=path.json arguments -> {NAME: row}; None (after a message) when one is wrong."""
    rows = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            print(f"{prog}: expected NAME=existing.json, got {item!r}", file=sys.stderr)
            return None
        rows[name] = json.loads(Path(path).read_text())
    return rows


def table_command(argv: list[str] | None, description: str, render, prog: str, runs_help: str) -> int:
    """The command line of the recipe's tables: NAME=json rows -> render(rows, split), printed
    and optionally written; a ValueError of ``render`` is a one-line error."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("runs", nargs="+", help=runs_help)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    rows = read_runs(args.runs, prog)
    if rows is None:
        return 2
    try:
        text = render(rows, args.split)
    except ValueError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def render(rows: dict[str, dict], split: str) -> str:
    first = next(iter(rows.values()))
    return f"{first['dataset']} / {split} ({first['images']} images, {first['pixels']} pixels)\n\n{table(rows)}"


def main(argv: list[str] | None = None) -> int:
    return table_command(argv, __doc__.split("\n")[0], render, "results_table.py", "NAME=results.json")


if __name__ == "__main__":
    sys.exit(main())
