#!/usr/bin/env bash
# Image reproductions through the shared trainer (SQ-VAE Sections 5.1-5.2, EdVAE, DVQ).
#
#   ./run.sh                                             # digits (embedded), 2 CPU cores, minutes
#   ./run.sh --dataset mnist --data-root /data/mnist --quantizers "vq_ema sq_gauss1 sq_fixed" --device cuda
#   ./run.sh --dataset celeba_mask --data-root /data/CelebAMask-HQ --quantizers "sq_vmf" --device cuda
#
# Stages: 0 data check, 1 train one model per quantizer, 2 evaluate on --split,
# 3 print the table of MSE (x1e3) / pixel error / mIoU and perplexity per quantizer.
# Outputs: exp/<tag>/<quantizer>/ (checkpoints, train.log, tensorboard, results_<split>.json)
# and exp/<tag>/results_<split>.md. Re-running resumes finished or interrupted training.
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
stage=0                     # first stage to run
stop_stage=3                # last stage to run

readonly help_message="Usage: $0 [options]   (image VQ-VAE experiments with any quantizers; see the header of this file)"
. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -gt 0 ]; then echo "$0: unexpected argument(s): $*" >&2; exit 2; fi

. "$recipe_dir/../../scripts/activate.sh"
export PYTHONUNBUFFERED=1 LC_ALL=C
cd "$recipe_dir"

log() { echo "$(date '+%F %T') [images] $*"; }

[ -n "$experiment" ] || experiment=images_${dataset/celeba_mask/celebamask}
[ -n "$tag" ] || tag=images_${dataset}
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
    speechsq train "${args[@]}" training.progress=false > "$exp/$q/train.out" 2>&1 \
      || { echo "$0: training $q failed; see $exp/$q/train.out" >&2; tail -5 "$exp/$q/train.out" >&2; exit 1; }
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
log "done: $exp"
