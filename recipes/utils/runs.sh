# The runs of a recipe: one model per (quantizer, decoder variance for the VQ family, seed).
# Sourced by run.sh; the list is a plain file read by steps/train.sh and steps/extract.sh:
#
#   <name> <quantizer> <seed> [hydra overrides...]      e.g.
#   vq_ema_sigma2_0.1 vq_ema 1 quantizer.likelihood.sigma2=0.1
#   sq_gauss1 sq_gauss1 1
#
# Each run trains into EXP/<name>/seed<seed>/; `speechsq report` makes one table row per <name>.

# fixed_variance QUANTIZER CONFIG: true when the quantizer's decoder likelihood has a fixed
# sigma^2 (the VQ family, SQ-VAE eq. 4), i.e. when the Table 9 grid applies to it.
fixed_variance() {
  local name
  name=$(python -c 'import sys
from speechsq.errors import SpeechsqError
from speechsq.training.config import compose_config
try:
    print(compose_config(sys.argv[1:]).quantizer.likelihood.name)
except SpeechsqError as err:
    sys.exit(f"error: {err}")' experiment="$2" quantizer="$1") || exit 2
  [ "$name" = gaussian_fixed ]
}

# write_runs FILE CONFIG "QUANTIZERS" "SIGMA2 GRID" "SEEDS"
write_runs() {
  local file=$1 config=$2 quantizers=$3 grid=$4 seeds=$5 q s2 seed values
  mkdir -p "$(dirname "$file")"
  : > "$file.tmp"
  for q in $quantizers; do
    values=default
    if [ -n "$grid" ]; then
      # (not in an `if` condition: a failing compose must stop the recipe, not read as "no")
      fixed=0; fixed_variance "$q" "$config" && fixed=1
      [ $fixed = 1 ] && values=$grid
    fi
    for s2 in $values; do
      for seed in $seeds; do
        if [ "$s2" = default ]; then
          echo "$q $q $seed" >> "$file.tmp"
        else
          echo "${q}_sigma2_$s2 $q $seed quantizer.likelihood.sigma2=$s2" >> "$file.tmp"
        fi
      done
    done
  done
  mv "$file.tmp" "$file"
}

# wait_for_slot NJ: block until fewer than NJ background jobs of this shell are running.
# (Each job writes its own .done marker; callers check the markers, not exit codes, so a
# job that finished before `wait -n` was called cannot be miscounted.)
wait_for_slot() {
  while [ "$(jobs -rp | wc -l)" -ge "$1" ]; do wait -n || true; done
}

# synth_runs RUNS_FILE SEEDS: the lines of RUNS_FILE for SEEDS ("first": each run's first seed,
# "all", or a list of seeds)
synth_runs() {
  case "$2" in
    all) cat "$1" ;;
    first) awk '!seen[$1]++' "$1" ;;
    *) awk -v want=" $2 " 'index(want, " " $3 " ")' "$1" ;;
  esac
}

# for_each_run RUNS_FILE NJ MARKER FUNCTION: run `FUNCTION <run> <seed>` in the background, NJ at
# a time, for every line of RUNS_FILE whose $exp/<run>/seed<N>/MARKER is missing (every line
# when $redo = 1); FUNCTION touches MARKER when it succeeds. Fails listing the runs that have
# no MARKER afterwards.
for_each_run() {
  local file=$1 nj=$2 marker=$3 fn=$4 name q seed rest
  local failed=()
  while read -r name q seed rest; do
    [ -n "$name" ] || continue
    if [ "${redo:-0}" = 1 ] || [ ! -f "$exp/$name/seed$seed/$marker" ]; then
      rm -f "$exp/$name/seed$seed/$marker"
      wait_for_slot "$nj"
      "$fn" "$name" "$seed" < /dev/null &
    fi
  done < "$file"
  wait || true
  while read -r name q seed rest; do
    [ -z "$name" ] || [ -f "$exp/$name/seed$seed/$marker" ] || failed+=("$exp/$name/seed$seed/log/")
  done < "$file"
  if [ ${#failed[@]} -gt 0 ]; then
    echo "$0: $fn failed for ${#failed[@]} run(s); see the logs in ${failed[*]}" >&2
    return 1
  fi
}
