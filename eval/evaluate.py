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

Nothing incomplete or mismatched is scored (:mod:`speechsq.eval.inputs`): ``--units`` must be
complete and extracted with ``--checkpoint`` (same file content); ``--mse-feats`` and
``--baseline-feats`` must be complete feature dirs, ``--mse-feats`` of ``--mse-data``; every
file of ``--items`` must be in the units (or features), except files left out upstream as
unusable, whose items are dropped and counted (``abx_items_dropped``); ``--probe-data`` must
hold the units' utterances. NaN/Inf in features or units stop the run naming the utterance.
The evaluation dir (``<exp-dir>/eval``) loses its completion marker when the run starts and
gets it back (kind ``eval``, with the checkpoint and inputs) only after ``metrics.json`` is
written; ``speechsq report`` refuses runs without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

from speechsq.completion import atomic_write_json, begin, mark_complete
from speechsq.data_prep.argtypes import positive_int
from speechsq.eval.inputs import EvalInputError

log = logging.getLogger(__name__)

ABX_FEATURES = ("z_q", "z_e", "indices")


def _abx_summary(result) -> dict:
    return {
        "abx_within": result.scores.get("within-within"),
        "abx_across": result.scores.get("across-within"),
        "abx": result.to_dict(),
    }


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
        raise EvalInputError(f"standardised features: no cmvn.npz found (tried {candidates}); pass --cmvn")
    top_db = pre.get("top_db")
    if top_db is None:
        raise EvalInputError("preprocessing.top_db is not set and the features are not standardised: no dB scale")
    return db_scale(n_mels, top_db=float(top_db)), None


def evaluate_run(args, out_dir: Path) -> dict:
    """Every metric the options ask for (see the module docstring); ``out_dir`` receives
    ``code_usage.png`` and, when items had to be dropped, ``items.used``."""
    from speechsq.eval.abx import compute_abx
    from speechsq.eval.bitrate import compute_bitrate
    from speechsq.eval.codebook import codebook_stats, plot_code_usage
    from speechsq.eval.extract import DOWNSAMPLING, encode_batches, feature_frame_shift, num_codes_of, resolve_device
    from speechsq.eval.inputs import checkpoint_identity, items_for, read_unit_arrays, require_units
    from speechsq.features import require_features

    metrics: dict = {}

    if args.baseline_feats:
        if not args.items:
            raise EvalInputError("--baseline-feats needs --items (the ABX item file of those features' set)")
        feats = require_features(args.baseline_feats)
        items, dropped = items_for(args.items, feats, feats.skipped(), f"the features {args.baseline_feats}",
                                   out_dir / "items.used")
        result = compute_abx(
            items, feats, frame_shift=args.baseline_frame_shift,
            distance=args.abx_distance, context_modes=("within",),
        )
        metrics.update(_abx_summary(result))
        metrics.update({"model": "log-Mel baseline", "abx_items_dropped": dropped})
        return metrics

    if not args.checkpoint:
        raise EvalInputError("--checkpoint is required (or --baseline-feats for the log-Mel baseline)")
    if not Path(args.checkpoint).is_file():
        raise EvalInputError(f"{args.checkpoint}: no such checkpoint file")
    if args.probe_ali and not (args.units and args.probe_data):
        raise EvalInputError("--probe-ali needs --units and --probe-data (for utt2spk)")
    if args.items and not args.units:
        raise EvalInputError("--items needs --units (the output of `speechsq extract` on the items' set)")
    from speechsq.training import load_model

    identity = checkpoint_identity(args.checkpoint)
    units = require_units(args.units, identity) if args.units else None  # before any work
    device = resolve_device(args.device)
    model, cfg = load_model(args.checkpoint, device=device)
    num_codes = num_codes_of(model)
    unit_shift = feature_frame_shift(cfg) * DOWNSAMPLING
    if units is not None and units.frame_shift is not None and not math.isclose(units.frame_shift, unit_shift):
        from speechsq.errors import MismatchError

        raise MismatchError(f"{units.described} have a frame shift of {units.frame_shift} s, the checkpoint's "
                            f"units {unit_shift} s; run `speechsq extract` again")
    metrics.update({"checkpoint": str(args.checkpoint), "checkpoint_sha256": identity["checkpoint_sha256"],
                    "checkpoint_step": identity["checkpoint_step"], "quantizer": str(cfg["quantizer"]["name"]),
                    "seed": cfg.get("seed")})

    indices: dict[str, np.ndarray] | None = None
    if args.mse_data:
        from speechsq.eval.mse import evaluate_mse, read_eval_list
        from speechsq.eval.inputs import check_utterances

        feats_dir = args.mse_feats or args.mse_data
        feats = require_features(feats_dir, data_dir=args.mse_data)
        skipped = feats.skipped()
        scale, cmvn_used = _dB_scale(cfg, model.n_mels, args.mse_feats, args.cmvn)
        pairs = read_eval_list(args.mse_data, args.eval_list)
        left_out = check_utterances([u for u, _ in pairs], feats, skipped, args.eval_list or args.mse_data,
                                    f"the features {feats_dir}")
        if left_out:
            log.warning("MSE: %d utterances of %s have no features (skipped by compute-feats) and are not scored",
                        len(left_out), args.mse_data)
        pairs = [(u, s) for u, s in pairs if u not in left_out]
        mse = evaluate_mse(model, feats, pairs, scale, args.batch_size, device, trim=args.trim, progress=not args.no_progress)
        metrics["mse_db2"] = mse.mse_db2
        metrics["mse"] = {**mse.to_dict(), "trim": args.trim, "cmvn": cmvn_used, "no_features": len(left_out)}
        if units is None:
            indices = {e.utt: e.indices for e in encode_batches(model, feats, [u for u, _ in pairs], args.batch_size, device, False)}

    if units is not None:
        indices = read_unit_arrays(units, "indices")
    if indices:
        stats = codebook_stats(indices.values(), num_codes)
        rate = compute_bitrate(indices, frame_shift=unit_shift)
        metrics.update({"perplexity": stats.perplexity, "active_codes": stats.active_codes, "bitrate": rate.bitrate})
        metrics["codebook"] = stats.to_dict()
        metrics["bitrate_detail"] = rate.to_dict()
        plot_code_usage(np.asarray(stats.counts), out_dir / "code_usage.png", title=metrics["quantizer"])

    if units is not None and args.items:
        sub = args.abx_features
        items, dropped = items_for(args.items, units.utterances, units.left_out, units.described, out_dir / "items.used")
        features = read_unit_arrays(units, sub)
        distance = "edit" if sub == "indices" else args.abx_distance
        result = compute_abx(items, features, frame_shift=unit_shift, distance=distance, context_modes=("within",))
        metrics.update(_abx_summary(result))
        metrics["abx_items_dropped"] = dropped

    if args.probe_ali:
        from speechsq.data_prep.alignments import read_alignments
        from speechsq.data_prep.kaldi_dir import data_dir_utterances, read_table
        from speechsq.eval.inputs import check_utterances
        from speechsq.eval.probes import speech_probes

        check_utterances(units.utterances, data_dir_utterances(args.probe_data), (), units.described,
                         f"--probe-data {args.probe_data}")
        z = read_unit_arrays(units, "z_e")
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
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", default="auto", help="CPU threads (default: SPEECHSQ_THREADS/OMP_NUM_THREADS or all cores)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from speechsq.threads import configure_threads

    configure_threads(args.threads)
    out = Path(args.out) if args.out else Path(args.exp_dir) / "eval" / "metrics.json"
    out_dir = begin(out.parent)  # from now on the old results no longer look complete
    metrics = evaluate_run(args, out_dir)
    atomic_write_json(out, metrics)
    written = [out.name] + (["code_usage.png"] if (out_dir / "code_usage.png").is_file() else [])
    inputs = {key: getattr(args, key) for key in ("units", "items", "mse_data", "mse_feats", "baseline_feats", "probe_data")}
    mark_complete(out_dir, "eval", written, producer="speechsq evaluate", metrics=out.name,
                  checkpoint=metrics.get("checkpoint"), checkpoint_sha256=metrics.get("checkpoint_sha256"),
                  checkpoint_step=metrics.get("checkpoint_step"),
                  **{k: str(Path(v).resolve()) for k, v in inputs.items() if v})
    shown = {k: metrics[k] for k in ("mse_db2", "abx_across", "abx_within", "bitrate", "perplexity", "active_codes") if k in metrics}
    print(json.dumps(shown, indent=2))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
