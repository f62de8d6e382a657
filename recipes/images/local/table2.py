"""Print (and save) SQ-VAE Table 2 from the rows of `speechsq image-fid` (run.sh stage 7).

    python local/table2.py --split test vq=exp/images_digits/vq/fid_test.json sq_gauss1=...

The header says which feature space the distances were measured in: the standard FID
(Inception-v3 weights given) or the offline "FD (speechsq classifier, not comparable to
published FID)"; rows measured in different spaces are refused.
"""

from __future__ import annotations

import json
import sys

from results_table import table_command  # local/ is the script's directory, first on sys.path

# quantizer name -> the row name of SQ-VAE Table 2 (or of the paper's other tables)
PAPER_NAMES = {
    "vq": "VQ-VAE",
    "vq_ema": "VQ-VAE (EMA)",
    "vq_ema_reset": "VQ-VAE (EMA+code reset)",
    "sq_fixed": "Quantization w/ fixed sigma_q^2",
    "sq_gauss1": "Gaussian SQ-VAE (I)",
    "sq_gauss2": "Gaussian SQ-VAE (II)",
    "sq_gauss3": "Gaussian SQ-VAE (III)",
    "sq_gauss4": "Gaussian SQ-VAE (IV)",
    "sq_vmf": "vMF SQ-VAE",
}


def _fmt(value, spec: str = "{:.2f}") -> str:
    return "-" if value is None else spec.format(value)


def table(rows: dict[str, dict]) -> str:
    spaces = {json.dumps(r["feature_space"].get("label")) for r in rows.values()}
    if len(spaces) != 1:
        raise ValueError(f"the rows were measured in different feature spaces: {sorted(spaces)}")
    first = next(iter(rows.values()))
    unit = "FID" if first["feature_space"].get("comparable_to_published_fid") else "FD"
    ks = sorted({int(k) for r in rows.values() for k in r.get("neighbor", {})})
    header = ["model", "MSE (x1e3)", f"r{unit}", f"Generation ({unit})"]
    header += [f"Neighbor-{k} ({unit})" for k in ks] + [f"Interp. ({unit})", "prior NLL (bits/code)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, r in rows.items():
        label = f"{PAPER_NAMES[name]} (`{name}`)" if name in PAPER_NAMES else name
        cells = [label, _fmt(r.get("mse_x1e3")), _fmt(r.get("rfid")), _fmt(r.get("generation"))]
        cells += [_fmt(r.get("neighbor", {}).get(str(k))) for k in ks]
        cells += [_fmt(r.get("interp")), _fmt(r.get("prior_test_bits_per_code"), "{:.3f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caption(rows: dict[str, dict], split: str) -> str:
    first = next(iter(rows.values()))
    space = first["feature_space"]
    lines = [
        f"SQ-VAE Table 2 shape on {first['dataset']} / {split} ({first['images']} images; "
        f"generation: {first.get('generated') or '-'} samples from each model's PixelCNN prior)",
        f"distances: {space['label']}",
    ]
    if not space.get("comparable_to_published_fid"):
        acc = space.get("valid_accuracy")
        lines.append("  (Fréchet distance in the pooled features of a small CNN trained on this dataset's training split"
                     + (f", validation accuracy {100 * acc:.1f}%" if acc is not None else "")
                     + "; give --inception-weights for the standard FID)")  # fmt: skip
    return "\n".join(lines)


def render(rows: dict[str, dict], split: str) -> str:
    return f"{caption(rows, split)}\n\n{table(rows)}"


def main(argv: list[str] | None = None) -> int:
    return table_command(argv, __doc__.split("\n")[0], render, "table2.py", "NAME=fid_<split>.json")


if __name__ == "__main__":
    sys.exit(main())
