"""Collect per-run metrics into the tables of SQ-VAE Tables 9-10.

    speechsq report --exp-dir exp/<tag>

Layout read (written by ``speechsq evaluate``)::

    exp/<tag>/<quantizer>/seed<N>/eval/metrics.json    one run (any number of seeds)
    exp/<tag>/baseline/eval/metrics.json               optional: ABX of the input log-Mels

A ``<quantizer>`` directory may carry a suffix (``vq_ema_sigma0.1``) to tell apart
configurations of one quantizer; it is the row label. Written next to them:

``results.json``  per row: seeds, and for each of ``mse_db2, abx_across, abx_within,
                  bitrate, perplexity, active_codes`` the values, mean and sample standard
                  deviation (ddof = 1; 0 with a single seed); plus ``baseline``.
``results.md``    the same as a Markdown table (mean ± std), printed too.

Only complete evaluations are collected: each ``eval/`` directory must carry the ``eval``
completion marker that ``speechsq evaluate`` writes after ``metrics.json``, and a
``metrics.json`` that is not a JSON object is an error naming the file (one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

from speechsq.completion import require_complete
from speechsq.errors import IncompleteOutputError, SpeechsqError

log = logging.getLogger(__name__)


class ReportInputError(SpeechsqError, ValueError):
    """A metrics file the report cannot read."""


def read_metrics(path: Path) -> dict:
    """A complete evaluation's ``metrics.json`` as a dict; one-line errors naming the file."""
    require_complete(path.parent, "eval", remedy=f"run `speechsq evaluate` again for {path.parent.parent}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportInputError(f"{path} is not valid JSON ({err}); run `speechsq evaluate` again for "
                               f"{path.parent.parent}") from None
    if not isinstance(data, dict):
        raise ReportInputError(f"{path} holds a JSON {type(data).__name__}, expected an object of metrics; "
                               f"run `speechsq evaluate` again for {path.parent.parent}")
    for key in METRICS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ReportInputError(f"{path}: {key} is {value!r}, expected a number or null")
    return data

METRICS = ("mse_db2", "abx_across", "abx_within", "bitrate", "perplexity", "active_codes")
HEADERS = {
    "mse_db2": "MSE (dB²) ↓",
    "abx_across": "ABX across (%) ↓",
    "abx_within": "ABX within (%) ↓",
    "bitrate": "bitrate (bit/s)",
    "perplexity": "perplexity",
    "active_codes": "active codes",
}
# paper names of the quantizers (SQ-VAE Tables 9-10); unknown names are shown as they are
DISPLAY_NAMES = {
    "vq": "VQ-VAE",
    "vq_ema": "VQ-VAE w/ EMA",
    "vq_ema_reset": "VQ-VAE w/ EMA + code reset",
    "sq_fixed": "Quantization w/ fixed σ_q²",
    "sq_gauss1": "Gaussian SQ-VAE (I)",
    "sq_gauss2": "Gaussian SQ-VAE (II)",
    "sq_gauss3": "Gaussian SQ-VAE (III)",
    "sq_gauss4": "Gaussian SQ-VAE (IV)",
    "sq_vmf": "vMF SQ-VAE",
    "gumbel_vq": "Gumbel VQ",
    "dvae": "dVAE",
    "edvae": "EdVAE",
    "gmvq": "GM-VQ",
    "soft_vq": "soft VQ-VAE",
}
SEED_DIR = re.compile(r"^seed(\d+)$")


def summarize(values: list[float]) -> dict:
    if not values:  # e.g. ABX within-speaker on a corpus too small to form a cell
        return {"values": [], "mean": None, "std": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "values": arr.tolist(),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "n": len(arr),
    }


SYNTHESIS_DIR = "synthesis_eval"
SYNTHESIS_METRICS = ("resynthesis_mcd_db", "resynthesis_lsd_db", "conversion_speaker_match", "conversion_abx_across",
                     "conversion_abx_across_original")
SYNTHESIS_HEADERS = {
    "resynthesis_mcd_db": "resynthesis MCD (dB) ↓",
    "resynthesis_lsd_db": "resynthesis LSD (dB) ↓",
    "conversion_speaker_match": "conversion: target speaker (%) ↑",
    "conversion_abx_across": "conversion: ABX across (%) ↓",
    "conversion_abx_across_original": "same utterances, original speech: ABX across (%)",
}


def read_synthesis_measures(seed_dir: Path) -> dict | None:
    """The flat speech-out measures of a run (``<run>/synthesis_eval/``), None where not measured."""
    folder = seed_dir / SYNTHESIS_DIR
    if not folder.exists():
        return None
    require_complete(folder, "synthesis_measures", remedy=f"run `speechsq synthesis-measures` again for {seed_dir}")
    path = folder / "synthesis.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportInputError(f"{path} cannot be read ({err}); run `speechsq synthesis-measures` again") from None
    return {k: data.get(k) for k in SYNTHESIS_METRICS}


def collect(exp_dir: str | Path) -> dict:
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise IncompleteOutputError(f"experiment directory not found: {exp_dir}")
    rows: dict[str, dict] = {}
    for metrics_file in sorted(exp_dir.glob("*/seed*/eval/metrics.json")):
        seed_dir = metrics_file.parent.parent
        match = SEED_DIR.match(seed_dir.name)
        if not match:
            continue
        quantizer = seed_dir.parent.name
        data = read_metrics(metrics_file)
        row = rows.setdefault(quantizer, {"seeds": [], "runs": {}})
        row["seeds"].append(int(match.group(1)))
        row["runs"][seed_dir.name] = {k: data.get(k) for k in METRICS}
        synthesis = read_synthesis_measures(seed_dir)
        if synthesis is not None:
            row.setdefault("synthesis", {})[seed_dir.name] = synthesis
    results: dict = {"exp_dir": str(exp_dir), "quantizers": {}, "baseline": None}
    for quantizer, row in sorted(rows.items()):
        entry = {"display_name": display_name(quantizer), "seeds": sorted(row["seeds"]), "metrics": {}}
        for key in METRICS:
            # every key is present (mean None when no run could score it), so tables and
            # scripts reading results.json see the same schema whatever the corpus size
            values = [run[key] for run in row["runs"].values() if run.get(key) is not None]
            entry["metrics"][key] = summarize(values)
        if row.get("synthesis"):  # speech out (speechsq synthesis-measures), where it was run
            entry["synthesis"] = {key: summarize([run[key] for run in row["synthesis"].values() if run.get(key) is not None])
                                  for key in SYNTHESIS_METRICS}
        results["quantizers"][quantizer] = entry
    baseline = exp_dir / "baseline" / "eval" / "metrics.json"
    if baseline.is_file():
        data = read_metrics(baseline)
        results["baseline"] = {k: data.get(k) for k in ("abx_across", "abx_within")}
    if not results["quantizers"] and results["baseline"] is None:
        raise IncompleteOutputError(f"no <quantizer>/seed<N>/eval/metrics.json (nor baseline) under {exp_dir}; "
                                    "run `speechsq evaluate` first")
    return results


def display_name(quantizer: str) -> str:
    """Paper name of a row: ``vq_ema_sigma2_0.1`` -> ``VQ-VAE w/ EMA (σ² = 0.1)``."""
    base, sep, sigma2 = quantizer.rpartition("_sigma2_")
    if sep and base:
        return f"{display_name(base)} (σ² = {sigma2})"
    for name in sorted(DISPLAY_NAMES, key=len, reverse=True):
        if quantizer == name:
            return DISPLAY_NAMES[name]
        if quantizer.startswith(name + "_"):
            return f"{DISPLAY_NAMES[name]} ({quantizer[len(name) + 1:]})"
    return quantizer


def _cell(stat: dict | None, digits: int) -> str:
    if not stat or not stat["n"]:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def markdown_table(results: dict) -> str:
    digits = {"mse_db2": 2, "abx_across": 2, "abx_within": 2, "bitrate": 1, "perplexity": 1, "active_codes": 0}
    lines = [
        "| Model | seeds | " + " | ".join(HEADERS[m] for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for entry in results["quantizers"].values():
        cells = [_cell(entry["metrics"].get(m), digits[m]) for m in METRICS]
        lines.append(f"| {entry['display_name']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    if results.get("baseline"):
        b = results["baseline"]
        cells = ["–"] * len(METRICS)
        for i, m in enumerate(METRICS):
            if m in b and b[m] is not None:
                cells[i] = f"{b[m]:.2f}"
        lines.append("| log-Mel baseline | – | " + " | ".join(cells) + " |")
    note = (
        "\nMean ± sample standard deviation over seeds. MSE as SQ-VAE Tables 3/9 (pooled over "
        "frames, reference frame trimming); ABX error rates as Table 10 (within context)."
    )
    text = "\n".join(lines) + "\n" + note + "\n"
    spoken = {name: e for name, e in results["quantizers"].items() if e.get("synthesis")}
    if spoken:
        lines = [
            "\n### Speech out (Griffin-Lim): resynthesis in the source voice, conversion into the target voices\n",
            "| Model | seeds | " + " | ".join(SYNTHESIS_HEADERS[m] for m in SYNTHESIS_METRICS) + " |",
            "|---|---|" + "---|" * len(SYNTHESIS_METRICS),
        ]
        for entry in spoken.values():
            stats = entry["synthesis"]
            cells = [_cell(stats.get(m), 2) for m in SYNTHESIS_METRICS]
            lines.append(f"| {entry['display_name']} | {stats[SYNTHESIS_METRICS[0]]['n'] or stats[SYNTHESIS_METRICS[2]]['n']} | "
                         + " | ".join(cells) + " |")
        text += "\n".join(lines) + (
            "\n\nMCD/LSD on the model's own log-Mel analysis of the resynthesised wav against the original "
            "(not comparable with SPTK MCDs); target speaker: share of converted utterances a speaker "
            "classifier trained on the training set assigns to the target voice; ABX of the converted "
            "speech re-encoded by the model, next to the ABX of the original speech of the same utterances "
            "re-encoded by the same model (the synthesised subset: compare these two columns, not the "
            "table above) (`speechsq synthesis-measures`).\n"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechsq report", description="Collect <quantizer>/seed<N>/eval/metrics.json into results.json / results.md.")
    p.add_argument("--exp-dir", required=True, help="experiment directory exp/<tag>")
    p.add_argument("--claims", default=None,
                   help="also check a paper's claims on these numbers and add the verdicts to results.{md,json} "
                        "(sqvae_zerospeech19, sqvae_vctk)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = collect(args.exp_dir)
    exp_dir = Path(args.exp_dir)
    table = markdown_table(results)
    if args.claims:
        from speechsq.eval.claims import check_claims, claims_markdown

        verdicts = check_claims(args.claims, exp_dir, results)
        results["claims"] = {"set": args.claims, "results": [v.to_dict() for v in verdicts]}
        table += "\n" + claims_markdown(args.claims, verdicts)
    (exp_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (exp_dir / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
