#!/usr/bin/env bash
# Speech out of every trained run (shared by the speech recipes): voice conversion of a set into
# target voices, resynthesis of another set in its own voices, their measures, listening samples.
#
#   ../steps/synthesize.sh --quantizers "vq_ema sq_gauss1" --seeds "1" --voices "V001 V002" \
#       --items data/test/items EXP_DIR CONVERT_DATA RESYNTH_DATA TRAIN_DATA TRAIN_FEATS
#
# For each run EXP_DIR/<quantizer>/seed<N>/ (checkpoints/last.pt):
#   synthesis/<convert set>/<voice>/<utt>.wav   CONVERT_DATA (e.g. data/test) in every --voices voice;
#   synthesis/<convert set>/zerospeech/test/    the same, named <voice>_<file id>.wav: the synthesis
#                                               part of the ZeroSpeech 2019 submission
#   synthesis/<resynth set>/source/<utt>.wav    RESYNTH_DATA (e.g. data/parallel) in its own voices
#   eval/synthesis.json                         speechsq synthesis-measures: resynthesis_mcd_db,
#                                               resynthesis_lsd_db, conversion_speaker_match,
#                                               conversion_abx_within, conversion_abx_across
#   EXP_DIR/samples/<quantizer>_seed<N>/        the first --samples utterances of every voice
# and .synthesis.done last; finished runs are skipped unless --redo 1.
set -euo pipefail

quantizers=""              # registry names
seeds="1"                  # seeds of the runs
voices="V001 V002"         # training speakers to convert into
items=""                   # ABX item file of CONVERT_DATA (content of the converted speech); empty = no ABX
samples=2                  # utterances per voice copied to EXP_DIR/samples/ (0 = none)
gl_iters=64                # Griffin-Lim iterations
redo=0                     # 1 = synthesise again
cmd=""                     # job runner (default: utils/run_local.sh)

. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
steps_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -eq 5 ] || { echo "usage: $0 [options] EXP_DIR CONVERT_DATA RESYNTH_DATA TRAIN_DATA TRAIN_FEATS" >&2; exit 2; }
[ -n "$quantizers" ] || { echo "$0: --quantizers is empty" >&2; exit 2; }
exp=$1 convert=$2 resynth=$3 train_data=$4 train_feats=$5
cmd=${cmd:-$steps_dir/../utils/run_local.sh}
convert_set=$(basename "$convert") resynth_set=$(basename "$resynth")

for q in $quantizers; do
  for seed in $seeds; do
    dir=$exp/$q/seed$seed
    [ "$redo" = 1 ] || [ ! -f "$dir/.synthesis.done" ] || continue
    echo "$(date '+%F %T') [synthesize] $q seed $seed: $convert_set in $voices, $resynth_set in its own voices"
    rm -f "$dir/.synthesis.done"
    ckpt=$dir/checkpoints/last.pt
    # shellcheck disable=SC2086
    $cmd "$dir/log/synthesize_$convert_set.log" speechsq resynthesize --checkpoint "$ckpt" --data-dir "$convert" \
      --speaker $voices --zerospeech --griffin-lim-iters "$gl_iters" --out "$dir/synthesis/$convert_set" --no-progress
    $cmd "$dir/log/synthesize_$resynth_set.log" speechsq resynthesize --checkpoint "$ckpt" --data-dir "$resynth" \
      --source-voice --griffin-lim-iters "$gl_iters" --out "$dir/synthesis/$resynth_set" --no-progress
    opts=(--speaker-feats "$train_feats" --speaker-data "$train_data")
    [ -n "$items" ] && opts+=(--items "$items")
    $cmd "$dir/log/synthesis_measures.log" speechsq synthesis-measures --checkpoint "$ckpt" \
      --synthesis "$dir/synthesis/$convert_set" "$dir/synthesis/$resynth_set" "${opts[@]}" \
      --out "$dir/eval/synthesis.json" --no-progress
    if [ "$samples" -gt 0 ]; then
      out=$exp/samples/${q}_seed$seed
      rm -rf "$out" && mkdir -p "$out"
      for sub in "$dir/synthesis/$convert_set"/* "$dir/synthesis/$resynth_set/source"; do
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
        [ -n "$original" ] && cp "$original" "$out/original_$wav"
      done
    fi
    touch "$dir/.synthesis.done"
  done
done
