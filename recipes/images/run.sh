#!/usr/bin/env bash
# Image reproductions through the shared trainer (SQ-VAE Sections 5.1-5.2, EdVAE, DVQ).
#
#   ./run.sh                                             # digits (embedded), 2 CPU cores, minutes
#   ./run.sh --dataset mnist --data-root /data/mnist --quantizers "vq_ema sq_gauss1 sq_fixed" --device cuda
#   ./run.sh --dataset celeba --data-root /data/celeba --quantizers "vq_ema vq_ema_reset sq_fixed sq_gauss1 sq_gauss2 sq_gauss3" \
#            --inception-weights /models/weights-inception-2015-12-05-6726825d.pth --device cuda   # Table 2
#   ./run.sh --dataset celeba_mask --data-root /data/CelebAMask-HQ --quantizers "sq_vmf" --device cuda --stop-stage 3
#
# Stages: 0 data check, 1 train one model per quantizer, 2 evaluate on --split,
# 3 print the table of MSE (x1e3) / pixel error / mIoU and perplexity per quantizer;
# SQ-VAE Table 2: 4 encode the training split into code maps, 5 train a gated PixelCNN
# prior on them, 6 rFID, generation, Neighbor-3/5/10 and interpolation FIDs (standard FID
# with --inception-weights, else an offline FD in a classifier's features, labelled as not
# comparable to published FID), 7 print the Table 2-shaped table.
# Outputs: exp/<tag>/<quantizer>/ (checkpoints, train.log, tensorboard, results_<split>.json,
# codes/train, prior/, fid_<split>.json, examples_<split>.png), exp/<tag>/fd_classifier/, exp/<tag>/results_<split>.md
# and exp/<tag>/table2_<split>.md. Re-running resumes finished or interrupted training.
set -euo pipefail

dataset=digits              # digits (embedded) | mnist | fashion_mnist | cifar10 | celeba | gray_celeba | celeba_mask | mnist_categorical
data_root=""                # dataset directory (not needed for digits)
quantizers="vq sq_gauss1 sq_fixed"   # quantizer names of the registry (speechsq/conf/quantizer)
experiment=""               # hydra experiment (default: images_<dataset>)
steps=""                    # training steps (default: the experiment's)
device=cpu                  # cpu | cuda | auto
split=test                  # evaluation split: valid | test
probes=false                # also run the k-means / linear probes on the latents (needs labels)
overrides=""                # extra hydra overrides for every training run, e.g. "model.categorical_decoder=categorical"
tag=""                      # experiment tag (default: images_<dataset>)
prior_experiment=""         # hydra experiment of the PixelCNN priors (default: prior_digits on digits, else prior_images)
prior_steps=""              # prior training steps (default: the prior experiment's)
fd_classifier_steps=600     # training steps of the offline FD classifier (without --inception-weights)
inception_weights=""        # local Inception-v3 weights for the standard FID (torch-fidelity's weights-inception-2015-12-05-6726825d.pth)
stage=0                     # first stage to run
stop_stage=7                # last stage to run (3: without Table 2)

readonly help_message="Usage: $0 [options]   (image VQ-VAE experiments with any quantizers; see the header of this file)"
. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -gt 0 ]; then echo "$0: unexpected argument(s): $*" >&2; exit 2; fi
if [ -n "$inception_weights" ]; then  # a path relative to where the user stands, not to the recipe
  [ -f "$inception_weights" ] || { echo "$0: --inception-weights $inception_weights: no such file" >&2; exit 2; }
  inception_weights=$(cd "$(dirname "$inception_weights")" && pwd)/$(basename "$inception_weights")
fi

# SPEECHSQ_NO_SETUP=1: the caller already runs inside a speechsq environment (tests)
[ -n "${SPEECHSQ_NO_SETUP:-}" ] || . "$recipe_dir/../../scripts/activate.sh"
export PYTHONUNBUFFERED=1 LC_ALL=C
cd "$recipe_dir"

log() { echo "$(date '+%F %T') [images] $*"; }
# run_logged WHAT LOGFILE COMMAND...: the command's output goes to LOGFILE; a failure names it
run_logged() {
  local what=$1 logfile=$2
  shift 2
  "$@" > "$logfile" 2>&1 || { echo "$0: $what failed; see $logfile" >&2; tail -5 "$logfile" >&2; exit 1; }
}

[ -n "$experiment" ] || experiment=images_${dataset/celeba_mask/celebamask}
[ -n "$tag" ] || tag=images_${dataset}
if [ -z "$prior_experiment" ]; then
  if [ "$dataset" = digits ]; then prior_experiment=prior_digits; else prior_experiment=prior_images; fi
fi
case "$probes" in true|false) ;; *) echo "$0: --probes must be true or false" >&2; exit 2 ;; esac
if [ "$dataset" != digits ] && [ -z "$data_root" ]; then
  echo "$0: --data-root is required for --dataset $dataset" >&2; exit 2
fi
exp=exp/$tag
data_args=()
[ -n "$data_root" ] && data_args+=("data.root=$data_root")

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "stage 0: checking dataset $dataset (${data_root:-embedded})"
  speechsq train "experiment=$experiment" "${data_args[@]}" --print-config > /dev/null
  python - "$experiment" "$split" "${data_args[@]}" <<'EOF'
import sys
from speechsq.data.images import load_split_from_config
from speechsq.training import compose_config
experiment, split, *rest = sys.argv[1:]
cfg = compose_config([f"experiment={experiment}", *rest])
for name in ("train", split):
    s = load_split_from_config(cfg.data, name)
    print(f"  {s.dataset}/{name}: {len(s)} images of {s.pixels.sample_shape}, {s.kind} pixels ({s.num_values} values)")
EOF
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  for q in $quantizers; do
    log "stage 1: training $q -> $exp/$q"
    mkdir -p "$exp/$q"
    args=("experiment=$experiment" "quantizer=$q" "exp_dir=$exp/$q" "training.device=$device" "resume=auto" "${data_args[@]}")
    [ -n "$steps" ] && args+=("training.steps=$steps" "training.checkpoint_every=$steps")
    # shellcheck disable=SC2206
    [ -n "$overrides" ] && args+=($overrides)
    run_logged "training $q" "$exp/$q/train.out" speechsq train "${args[@]}" training.progress=false
  done
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  for q in $quantizers; do
    log "stage 2: evaluating $q on the $split split"
    eval_args=(--checkpoint "$exp/$q/checkpoints/last.pt" --split "$split" --device "$device" --out "$exp/$q/results_$split.json")
    [ -n "$data_root" ] && eval_args+=(--data-root "$data_root")
    [ "$probes" = true ] && eval_args+=(--probes)
    python -m speechsq.eval.image_metrics "${eval_args[@]}" > /dev/null
  done
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "stage 3: results on $dataset/$split"
  python "$recipe_dir/local/results_table.py" --split "$split" --out "$exp/results_$split.md" \
    $(for q in $quantizers; do echo "$q=$exp/$q/results_$split.json"; done)
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  for q in $quantizers; do
    log "stage 4: code maps of the training split for $q -> $exp/$q/codes/train"
    run_logged "extracting the codes of $q" "$exp/$q/extract_codes.out" \
      speechsq extract-codes --checkpoint "$exp/$q/checkpoints/last.pt" --split train --out "$exp/$q/codes/train" \
      --device "$device" ${data_root:+--data-root "$data_root"}
  done
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  for q in $quantizers; do
    log "stage 5: PixelCNN prior ($prior_experiment) on the codes of $q -> $exp/$q/prior"
    args=("experiment=$prior_experiment" "data.codes_dir=$exp/$q/codes/train" "exp_dir=$exp/$q/prior" "training.device=$device" "resume=auto")
    [ -n "$prior_steps" ] && args+=("training.steps=$prior_steps" "training.checkpoint_every=$prior_steps" "training.milestones=[]")
    run_logged "training the prior of $q" "$exp/$q/prior.out" speechsq train "${args[@]}" training.progress=false
  done
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  for q in $quantizers; do
    log "stage 6: Table 2 columns of $q on the $split split"
    fid_args=(--checkpoint "$exp/$q/checkpoints/last.pt" --prior "$exp/$q/prior/checkpoints/last.pt" --split "$split"
              --classifier-dir "$exp/fd_classifier" --classifier-steps "$fd_classifier_steps" --device "$device"
              --out "$exp/$q/fid_$split.json" --figure "$exp/$q/examples_$split.png")
    [ -n "$data_root" ] && fid_args+=(--data-root "$data_root")
    [ -n "$inception_weights" ] && fid_args+=(--inception-weights "$inception_weights")
    run_logged "the FIDs of $q" "$exp/$q/fid_$split.out" speechsq image-fid "${fid_args[@]}"
  done
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  log "stage 7: SQ-VAE Table 2 on $dataset/$split"
  python "$recipe_dir/local/table2.py" --split "$split" --out "$exp/table2_$split.md" \
    $(for q in $quantizers; do echo "$q=$exp/$q/fid_$split.json"; done)
fi
log "done: $exp"
