#!/usr/bin/env bash
# Extract units of every trained run (shared by the speech recipes).
#
#   ../steps/extract.sh --quantizers "vq_ema sq_gauss1" --seeds "1" EXP_DIR DATA_DIR FEATS_DIR [extract options]
#
# Writes EXP_DIR/<quantizer>/seed<N>/units/ (see `speechsq extract --help`) and .units.done
# last; finished runs are skipped unless --redo 1.
set -euo pipefail

quantizers=""              # registry names
seeds="1"                  # seeds of the runs
redo=0                     # 1 = extract again
cmd=""                     # job runner (default: utils/run_local.sh)

. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
steps_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 3 ] || { echo "usage: $0 [options] EXP_DIR DATA_DIR FEATS_DIR [speechsq extract options]" >&2; exit 2; }
exp=$1 data=$2 feats=$3; shift 3
cmd=${cmd:-$steps_dir/../utils/run_local.sh}

for q in $quantizers; do
  for seed in $seeds; do
    dir=$exp/$q/seed$seed
    [ "$redo" = 1 ] || [ ! -f "$dir/.units.done" ] || continue
    echo "$(date '+%F %T') [extract] $q seed $seed"
    rm -rf "$dir/units" "$dir/.units.done"
    $cmd "$dir/log/extract.log" speechsq extract --checkpoint "$dir/checkpoints/last.pt" \
      --data-dir "$data" --feats "$feats" --out "$dir/units" --no-progress "$@"
    touch "$dir/.units.done"
  done
done
