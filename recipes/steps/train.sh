#!/usr/bin/env bash
# Train one model per quantizer and seed (shared by the speech recipes).
#
#   ../steps/train.sh --quantizers "vq_ema sq_gauss1" --seeds "1 2" --config mini EXP_DIR \
#       data.feats_dir=feats/train data.data_dir=data/train [more hydra overrides]
#
# Each run trains into EXP_DIR/<quantizer>/seed<N>/ and writes .train.done last: a finished
# run is skipped, an interrupted one resumes from its last checkpoint, and --redo 1 trains
# every run again from scratch (its old checkpoints are removed).
set -euo pipefail

quantizers=""              # registry names
seeds="1"                  # one model per quantizer and seed
config=mini                # experiment configuration (paper | mini)
ngpu=0                     # 0 = CPU, 1 = one GPU, >1 = torchrun data parallel
train_steps=""             # override training.steps
overrides=""               # extra hydra overrides (one string)
redo=0                     # 1 = retrain finished runs
cmd=""                     # job runner (default: utils/run_local.sh)

. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
steps_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 [options] EXP_DIR [hydra overrides]" >&2; exit 2; }
[ -n "$quantizers" ] || { echo "$0: --quantizers is empty" >&2; exit 2; }
exp=$1; shift
cmd=${cmd:-$steps_dir/../utils/run_local.sh}

launcher=(speechsq train)
[ "$ngpu" -gt 1 ] && launcher=(torchrun --standalone --nproc_per_node "$ngpu" -m speechsq.cli train)
device=cpu; [ "$ngpu" -gt 0 ] && device=cuda

for q in $quantizers; do
  for seed in $seeds; do
    dir=$exp/$q/seed$seed
    [ "$redo" = 1 ] || [ ! -f "$dir/.train.done" ] || continue
    echo "$(date '+%F %T') [train] $q seed $seed -> $dir"
    extra=("$@")
    [ -n "$train_steps" ] && extra+=("training.steps=$train_steps")
    # shellcheck disable=SC2206
    extra+=($overrides)
    if [ "$redo" = 1 ] && [ -d "$dir/checkpoints" ]; then
      echo "$(date '+%F %T') [train] --redo: removing the previous checkpoints of $dir"
      rm -rf "$dir/checkpoints" "$dir/tensorboard"
    fi
    rm -f "$dir/.train.done"
    $cmd "$dir/log/train.log" "${launcher[@]}" experiment="$config" quantizer="$q" seed="$seed" \
      training.device=$device exp_dir="$dir" resume=auto "${extra[@]}"
    touch "$dir/.train.done"
  done
done
