#!/usr/bin/env bash
# Train every run of a runs file (shared by the speech recipes), NJ at a time.
#
#   ../steps/train.sh --runs exp/mini/runs.txt --config mini --nj 2 EXP_DIR \
#       data.feats_dir=feats/train data.data_dir=data/train [more hydra overrides]
#
# The runs file has one line per model, `<name> <quantizer> <seed> [overrides]` (see
# utils/runs.sh). Each run trains into EXP_DIR/<name>/seed<N>/ and writes .train.done last:
# a finished run is skipped, an interrupted one resumes from its last checkpoint, and
# --redo 1 trains every run again from scratch (resume=restart: the trainer moves the old
# run to <run>/replaced/<time>/).
#
# Threads: each of the --nj parallel jobs gets --threads intra-op threads (default: cores //
# nj, at least 1), through OMP_NUM_THREADS (speechsq.threads reads it). With torch's default (all
# cores per job) two jobs, or one job and any other busy process, slow each other down
# by orders of magnitude (bench/threads.py).
set -euo pipefail

runs=""                    # runs file (utils/runs.sh)
config=mini                # experiment configuration (paper | mini)
nj=1                       # training jobs at a time
threads=""                 # intra-op threads per job (default: cores // nj)
ngpu=0                     # 0 = CPU, 1 = one GPU, >1 = torchrun data parallel
train_steps=""             # override training.steps
overrides=""               # extra hydra overrides for every run (one string)
redo=0                     # 1 = retrain finished runs
cmd=""                     # job runner (default: utils/run_local.sh)

. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
steps_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$steps_dir/../utils/runs.sh"
[ $# -ge 1 ] || { echo "usage: $0 [options] EXP_DIR [hydra overrides]" >&2; exit 2; }
[ -s "$runs" ] || { echo "$0: --runs file '$runs' is missing or empty" >&2; exit 2; }
exp=$1; shift
cmd=${cmd:-$steps_dir/../utils/run_local.sh}
[ "$nj" -ge 1 ] || { echo "$0: --nj must be >= 1" >&2; exit 2; }
cores=$(nproc)
threads=${threads:-$(( cores / nj > 0 ? cores / nj : 1 ))}

launcher=(speechsq train)
[ "$ngpu" -gt 1 ] && launcher=(torchrun --standalone --nproc_per_node "$ngpu" -m speechsq.cli train)
device=cpu; [ "$ngpu" -gt 0 ] && device=cuda

train_one() {  # name quantizer seed [run overrides...]
  local name=$1 q=$2 seed=$3; shift 3
  local dir=$exp/$name/seed$seed extra=("$@")
  [ -n "$train_steps" ] && extra+=("training.steps=$train_steps")
  # an unfinished run resumes (the trainer's default); --redo starts over, and the trainer
  # moves the old run to <dir>/replaced/<time>/ (never deletes it)
  [ "$redo" = 1 ] && extra+=("resume=restart")
  # shellcheck disable=SC2206
  extra+=($overrides)
  OMP_NUM_THREADS=$threads $cmd "$dir/log/train.log" "${launcher[@]}" experiment="$config" quantizer="$q" \
    seed="$seed" training.device=$device exp_dir="$dir" "${global[@]}" "${extra[@]}" \
    && touch "$dir/.train.done"
}

global=("$@")
todo=()
while read -r name q seed rest; do
  [ -n "$name" ] || continue
  dir=$exp/$name/seed$seed
  [ "$redo" = 1 ] || [ ! -f "$dir/.train.done" ] || continue
  rm -f "$dir/.train.done"
  todo+=("$name $q $seed $rest")
done < "$runs"

echo "$(date '+%F %T') [train] ${#todo[@]} run(s) to train, $nj at a time, $threads thread(s) each"
for job in "${todo[@]}"; do
  # shellcheck disable=SC2086
  set -- $job
  wait_for_slot "$nj"
  echo "$(date '+%F %T') [train] $2 seed $3 -> $exp/$1/seed$3"
  train_one "$@" &
done
wait || true

failed=()
for job in "${todo[@]}"; do
  # shellcheck disable=SC2086
  set -- $job
  [ -f "$exp/$1/seed$3/.train.done" ] || failed+=("$exp/$1/seed$3/log/train.log")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "$0: ${#failed[@]} training run(s) failed; see ${failed[*]}" >&2
  exit 1
fi
