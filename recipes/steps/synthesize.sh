#!/usr/bin/env bash
# Speech out of every trained run (shared by the speech recipes): voice conversion of a set into
# target voices, resynthesis of another set in its own voices, their measures, listening samples.
#
#   ../steps/synthesize.sh --runs exp/mini/runs.txt --voices "V001 V002" --items data/test/items \
#       EXP_DIR CONVERT_DATA RESYNTH_DATA TRAIN_DATA TRAIN_FEATS
#
# For each run EXP_DIR/<name>/seed<N>/ of the runs file (utils/runs.sh; checkpoints/last.pt):
#   synthesis/<convert set>/<voice>/<utt>.wav   CONVERT_DATA (e.g. data/test) in every --voices voice;
#   synthesis/<convert set>/zerospeech/test/    the same, named <voice>_<file id>.wav: the synthesis
#                                               part of the ZeroSpeech 2019 submission (--zerospeech 1)
#   synthesis/<resynth set>/source/<utt>.wav    RESYNTH_DATA (e.g. data/parallel) in its own voices (one
#                                               pass with the conversion when both sets are the same)
#   synthesis_eval/synthesis.json               speechsq synthesis-measures: resynthesis_mcd_db,
#                                               resynthesis_lsd_db, conversion_speaker_match,
#                                               conversion_abx_within, conversion_abx_across
#   EXP_DIR/samples/<name>_seed<N>/             the first --samples utterances of every voice
# and .synthesis.done last; finished runs are skipped unless --redo 1.
set -euo pipefail

runs=""                    # runs file (utils/runs.sh)
voices="V001 V002"         # training speakers to convert into
items=""                   # ABX item file of CONVERT_DATA (content of the converted speech); empty = no ABX
samples=2                  # utterances per voice copied to EXP_DIR/samples/ (0 = none)
gl_iters=64                # Griffin-Lim iterations
zerospeech=1               # 1 = also write the ZeroSpeech 2019 synthesis names (synthesis/<set>/zerospeech/test/)
limit=0                    # only N utterances of each set, from each speaker in turn (0 = all; the ZeroSpeech submission needs all)
nj=1                       # runs synthesised at a time (each with cores // nj threads)
redo=0                     # 1 = synthesise again
cmd=""                     # job runner (default: utils/run_local.sh)

. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
steps_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$steps_dir/../utils/runs.sh"
[ $# -eq 5 ] || { echo "usage: $0 [options] EXP_DIR CONVERT_DATA RESYNTH_DATA TRAIN_DATA TRAIN_FEATS" >&2; exit 2; }
[ -s "$runs" ] || { echo "$0: --runs file '$runs' is missing or empty" >&2; exit 2; }
exp=$1 convert=$2 resynth=$3 train_data=$4 train_feats=$5
cmd=${cmd:-$steps_dir/../utils/run_local.sh}
convert_set=$(basename "$convert") resynth_set=$(basename "$resynth")
subset=(); if [ "$limit" -gt 0 ]; then subset=(--limit "$limit"); fi
submission=(); if [ "$zerospeech" = 1 ]; then submission=(--zerospeech); fi

cores=$(nproc)
export OMP_NUM_THREADS=$(( cores / nj > 0 ? cores / nj : 1 ))  # chosen threads: no collapse next to other jobs

synthesize_one() {  # name seed
  local name=$1 seed=$2
  local dir=$exp/$name/seed$seed
  echo "$(date '+%F %T') [synthesize] $name seed $seed: $convert_set in $voices, $resynth_set in its own voices"
  ckpt=$dir/checkpoints/last.pt
  outputs=("$dir/synthesis/$convert_set")
  own_voice=()  # one set for both (VCTK: the test speakers are training speakers): one pass
  if [ "$convert" = "$resynth" ]; then own_voice=(--source-voice); fi
  # shellcheck disable=SC2086
  $cmd "$dir/log/synthesize_$convert_set.log" speechsq resynthesize --checkpoint "$ckpt" --data-dir "$convert" \
    --speaker $voices "${own_voice[@]}" "${submission[@]}" --griffin-lim-iters "$gl_iters" \
    --out "$dir/synthesis/$convert_set" --no-progress "${subset[@]}" < /dev/null
  if [ "$convert" != "$resynth" ]; then
    $cmd "$dir/log/synthesize_$resynth_set.log" speechsq resynthesize --checkpoint "$ckpt" --data-dir "$resynth" \
      --source-voice --griffin-lim-iters "$gl_iters" --out "$dir/synthesis/$resynth_set" --no-progress \
      "${subset[@]}" < /dev/null
    outputs+=("$dir/synthesis/$resynth_set")
  fi
  opts=(--speaker-feats "$train_feats" --speaker-data "$train_data")
  if [ -n "$items" ]; then opts+=(--items "$items"); fi
  $cmd "$dir/log/synthesis_measures.log" speechsq synthesis-measures --checkpoint "$ckpt" \
    --synthesis "${outputs[@]}" "${opts[@]}" --out "$dir/synthesis_eval" --no-progress < /dev/null
  if [ "$samples" -gt 0 ]; then
    out=$exp/samples/${name}_seed$seed
    rm -rf "$out" && mkdir -p "$out"
    voice_dirs=("$dir/synthesis/$convert_set"/*)
    if [ "$convert" != "$resynth" ]; then voice_dirs+=("$dir/synthesis/$resynth_set/source"); fi
    for sub in "${voice_dirs[@]}"; do
      case "$(basename "$sub")" in zerospeech) continue ;; esac
      [ -d "$sub" ] || continue
      voice=$(basename "$sub")
      # the sorted first utterances, and the original next to them
      for wav in $(ls "$sub" | sort | head -n "$samples"); do
        cp "$sub/$wav" "$out/${voice}_$wav"
      done
    done
    for wav in $(ls "$out" | sed -n 's/^source_//p'); do
      original=$(awk -v u="${wav%.wav}" '$1 == u {print $2}' "$resynth/wav.scp")
      if [ -n "$original" ]; then cp "$original" "$out/original_$wav"; fi
    done
  fi
  touch "$dir/.synthesis.done"
}

for_each_run "$runs" "$nj" .synthesis.done synthesize_one
