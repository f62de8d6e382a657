#!/usr/bin/env bash
# Extract units of every trained run of a runs file (shared by the speech recipes).
#
#   ../steps/extract.sh --runs exp/mini/runs.txt EXP_DIR DATA_DIR FEATS_DIR [extract options]
#
# Writes EXP_DIR/<name>/seed<N>/units/ (see `speechsq extract --help`) and .units.done
# last; finished runs are skipped unless --redo 1.
set -euo pipefail

runs=""                    # runs file (utils/runs.sh)
redo=0                     # 1 = extract again
cmd=""                     # job runner (default: utils/run_local.sh)

. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
steps_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 3 ] || { echo "usage: $0 [options] EXP_DIR DATA_DIR FEATS_DIR [speechsq extract options]" >&2; exit 2; }
[ -s "$runs" ] || { echo "$0: --runs file '$runs' is missing or empty" >&2; exit 2; }
exp=$1 data=$2 feats=$3; shift 3
cmd=${cmd:-$steps_dir/../utils/run_local.sh}

while read -r name q seed _; do
  [ -n "$name" ] || continue
  dir=$exp/$name/seed$seed
  [ "$redo" = 1 ] || [ ! -f "$dir/.units.done" ] || continue
  echo "$(date '+%F %T') [extract] $name seed $seed"
  rm -rf "$dir/units" "$dir/.units.done"
  $cmd "$dir/log/extract.log" speechsq extract --checkpoint "$dir/checkpoints/last.pt" \
    --data-dir "$data" --feats "$feats" --out "$dir/units" --no-progress "$@" < /dev/null
  touch "$dir/.units.done"
done < "$runs"
