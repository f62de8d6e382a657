"""Evaluate one trained run: MSE (dB^2), bitrate, codebook statistics, ABX, probes.

    speechsq evaluate --checkpoint exp/zs/vq_ema/seed1/checkpoints/last.pt \\
        --exp-dir exp/zs/vq_ema/seed1 \\
        --mse-data data/parallel --mse-feats feats/parallel \\
        [--units exp/zs/vq_ema/seed1/units/test --items data/test/items] \\
        [--probe-data data/test --probe-ali data/test/ali]

    # the log-Mel baseline of the ABX table (no checkpoint)
    speechsq evaluate --exp-dir exp/zs/baseline --baseline-feats feats/test --items data/test/items

Writes ``<exp-dir>/eval/metrics.json`` (or ``--out``), a flat dict read by
``speechsq report``: ``mse_db2``, ``bitrate``, ``perplexity``, ``active_codes``,
``abx_within`` and ``abx_across`` (percent, within-context conditions, the ZeroSpeech
2019 numbers), plus the detailed sections ``mse``, ``bitrate_detail``, ``codebook``,
``abx`` and ``probes``.

* MSE: :mod:`speechsq.eval.mse` over every utterance of ``--mse-data`` with its own
  speaker (or ``--eval-list``); dB scale from ``preprocessing.top_db``, or for
  standardised features from ``cmvn.npz`` (``--cmvn``, else next to the features).
* Bitrate and codebook statistics: over the extracted ``indices/*.npy`` of ``--units``
  (``speechsq extract``), or else over the MSE utterances encoded on the fly.
* ABX: the extracted continuous codes (``--abx-features z_q``, default), the encoder
  output (``z_e``) or the unit indices (``indices``, edit distance) on ``--items``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ABX_FEATURES = ("z_q", "z_e", "indices")


def _abx_summary(result) -> dict:
    return {
        "abx_within": result.scores.get("within-within"),
        "abx_across": result.scores.get("across-within"),
        "abx": result.to_dict(),
    }


def _read_unit_dir(units: Path, sub: str) -> dict[str, np.ndarray]:
    folder = units / sub
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise FileNotFoundError(f"no {sub}/*.npy under {units}; run `speechsq extract` first")
    return {f.stem: np.load(f) for f in files}


def _dB_scale(cfg, n_mels: int, feats_dir: str | None, cmvn_path: str | None):
    from speechsq.eval.mse import db_scale
    from speechsq.features import Cmvn

    pre = cfg["preprocessing"]
    if bool(pre.get("standardize", False)):
        candidates = [cmvn_path] if cmvn_path else []
        if feats_dir:
            candidates.append(str(Path(feats_dir) / "cmvn.npz"))
        train_feats = cfg.get("data", {}).get("feats_dir") if hasattr(cfg, "get") else None
        if train_feats:
            candidates.append(str(Path(str(train_feats)) / "cmvn.npz"))
        for candidate in candidates:
            if candidate and Path(candidate).is_file():
                return db_scale(n_mels, cmvn_std=Cmvn.load(candidate).std), candidate
        raise FileNotFoundError(f"standardised features: no cmvn.npz found (tried {candidates}); pass --cmvn")
    top_db = pre.get("top_db")
    if top_db is None:
        raise ValueError("preprocessing.top_db is not set and the features are not standardised: no dB scale")
    return db_scale(n_mels, top_db=float(top_db)), None


def evaluate_run(args) -> dict:
    from speechsq.eval.abx import compute_abx
    from speechsq.eval.bitrate import compute_bitrate
    from speechsq.eval.codebook import codebook_stats, plot_code_usage
    from speechsq.eval.extract import DOWNSAMPLING, encode_batches, feature_frame_shift, num_codes_of, resolve_device

    metrics: dict = {}
    out_dir = Path(args.out).parent if args.out else Path(args.exp_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)

    if args.baseline_feats:
        from speechsq.features import FeatureReader

        if not args.items:
            raise SystemExit("speechsq evaluate: --baseline-feats needs --items")
        result = compute_abx(
            args.items, FeatureReader(args.baseline_feats), frame_shift=args.baseline_frame_shift,
            distance=args.abx_distance, context_modes=("within",),
        )
        metrics.update(_abx_summary(result))
        metrics["model"] = "log-Mel baseline"
        return metrics

    if not args.checkpoint:
        raise SystemExit("speechsq evaluate: --checkpoint is required (or --baseline-feats)")
    from speechsq.training import load_model

    device = resolve_device(args.device)
    model, cfg = load_model(args.checkpoint, device=device)
    num_codes = num_codes_of(model)
    unit_shift = feature_frame_shift(cfg) * DOWNSAMPLING
    metrics.update({"checkpoint": str(args.checkpoint), "quantizer": str(cfg["quantizer"]["name"]), "seed": cfg.get("seed")})

    indices: dict[str, np.ndarray] | None = None
    if args.mse_data:
        from speechsq.eval.mse import evaluate_mse, read_eval_list
        from speechsq.features import FeatureReader

        feats = FeatureReader(args.mse_feats or args.mse_data)
        scale, cmvn_used = _dB_scale(cfg, model.n_mels, args.mse_feats, args.cmvn)
        pairs = read_eval_list(args.mse_data, args.eval_list)
        mse = evaluate_mse(model, feats, pairs, scale, args.batch_size, device, trim=args.trim, progress=not args.no_progress)
        metrics["mse_db2"] = mse.mse_db2
        metrics["mse"] = {**mse.to_dict(), "trim": args.trim, "cmvn": cmvn_used}
        if not args.units:
            indices = {e.utt: e.indices for e in encode_batches(model, feats, [u for u, _ in pairs], args.batch_size, device, False)}

    if args.units:
        indices = _read_unit_dir(Path(args.units), "indices")
    if indices:
        stats = codebook_stats(indices.values(), num_codes)
        rate = compute_bitrate(indices, frame_shift=unit_shift)
        metrics.update({"perplexity": stats.perplexity, "active_codes": stats.active_codes, "bitrate": rate.bitrate})
        metrics["codebook"] = stats.to_dict()
        metrics["bitrate_detail"] = rate.to_dict()
        plot_code_usage(np.asarray(stats.counts), out_dir / "code_usage.png", title=metrics["quantizer"])

    if args.units and args.items:
        sub = args.abx_features
        features = _read_unit_dir(Path(args.units), sub)
        distance = "edit" if sub == "indices" else args.abx_distance
        result = compute_abx(args.items, features, frame_shift=unit_shift, distance=distance, context_modes=("within",))
        metrics.update(_abx_summary(result))

    if args.probe_ali:
        from speechsq.data_prep.alignments import read_alignments
        from speechsq.data_prep.kaldi_dir import read_table
        from speechsq.eval.probes import speech_probes

        if not args.units or not args.probe_data:
            raise SystemExit("speechsq evaluate: --probe-ali needs --units and --probe-data (for utt2spk)")
        z = _read_unit_dir(Path(args.units), "z_e")
        probes = speech_probes(z, read_table(Path(args.probe_data) / "utt2spk"), read_alignments(args.probe_ali), unit_shift)
        metrics["probes"] = probes.to_dict()
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechsq evaluate", description="MSE (dB^2), bitrate, codebook statistics, ABX and probes of a run.")
    p.add_argument("--checkpoint", help="checkpoint of the run")
    p.add_argument("--exp-dir", required=True, help="run directory; results go to <exp-dir>/eval/metrics.json")
    p.add_argument("--out", help="metrics JSON path (default <exp-dir>/eval/metrics.json)")
    p.add_argument("--mse-data", help="Kaldi data dir of the MSE utterances (e.g. data/parallel)")
    p.add_argument("--mse-feats", help="its feature dir (default: --mse-data)")
    p.add_argument("--eval-list", help="file of '<utt> <target speaker>' lines (default: own speakers)")
    p.add_argument("--cmvn", help="cmvn.npz of standardised (VCTK) features")
    p.add_argument("--trim", default="reference", choices=["reference", "none"], help="frames scored by the MSE")
    p.add_argument("--units", help="output dir of `speechsq extract` (indices/, z_q/, z_e/)")
    p.add_argument("--items", help="ABX item file")
    p.add_argument("--abx-features", default="z_q", choices=ABX_FEATURES)
    p.add_argument("--abx-distance", default="cosine")
    p.add_argument("--baseline-feats", help="ABX of these input features instead of a model (the baseline row)")
    p.add_argument("--baseline-frame-shift", type=float, default=0.01)
    p.add_argument("--probe-data", help="data dir with utt2spk for the probes")
    p.add_argument("--probe-ali", help="phone alignments (data/<set>/ali) for the phone probe")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    metrics = evaluate_run(args)
    out = Path(args.out) if args.out else Path(args.exp_dir) / "eval" / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    shown = {k: metrics[k] for k in ("mse_db2", "abx_across", "abx_within", "bitrate", "perplexity", "active_codes") if k in metrics}
    print(json.dumps(shown, indent=2))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
