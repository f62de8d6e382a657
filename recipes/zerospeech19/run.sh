#!/usr/bin/env bash
# ZeroSpeech 2019 English: discrete units with any quantizer, scored as SQ-VAE Tables 9-10.
#
#   bash recipes/zerospeech19/run.sh                       # embedded corpus, mini config, CPU
#   bash recipes/zerospeech19/run.sh --corpus /data/zs2019/english --config paper --ngpu 1 \
#        --quantizers "vq_ema sq_gauss1 sq_gauss3 sq_gauss4" --seeds "1 2 3"
#
# Stages (each logs a timestamped line; --stage/--stop-stage select a range):
#   0 set-up and corpus (the embedded espeak-ng corpus when --corpus is not given)
#   1 Kaldi data dirs        data/{train,parallel,parallel_source,test}
#   2 log-Mel features       feats/<set>/feats.scp
#   3 training               exp/<tag>/<quantizer>/seed<N>/
#   4 unit extraction        exp/<tag>/<quantizer>/seed<N>/units/ (ZeroSpeech submission tree)
#   5 evaluation             MSE (dB^2) on parallel, ABX across/within on test, bitrate, codebook,
#                            and the log-Mel features themselves as an ABX baseline
#   6 report                 exp/<tag>/results.{json,md}
#
# Re-running skips work whose outputs are complete (each job writes a .done marker last);
# an explicit --stage N redoes stages N..stop-stage.
set -euo pipefail

# ---- defaults (each can be set with --name value; see --help) ----------------------------
stage=0                    # first stage to run
stop_stage=6               # last stage to run
corpus=""                  # ZeroSpeech 2019 english/ root; empty = embedded corpus
corpus_utterances=0        # embedded corpus size (0 = the generator's default)
corpus_seed=0              # embedded corpus seed
quantizers="vq_ema sq_gauss1"   # registry names (speechsq.quantizers.list_quantizers())
seeds="1"                  # one model per quantizer and seed
config=mini                # paper | mini (speechsq/conf/experiment/)
tag=""                     # experiment tag (default: <config>)
nj=2                       # parallel jobs for features and evaluation
ngpu=0                     # GPUs for training (0 = CPU; >1 = torchrun data parallel)
train_steps=""             # override the configuration's number of training steps
abx_distance=cosine        # ABX frame distance for continuous features
overrides=""               # extra hydra overrides for training, e.g. "quantizer.num_codes=256"

help_message="Usage: $0 [options]
ZeroSpeech 2019 English recipe: corpus -> data dirs -> features -> train -> units -> evaluation -> report."

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$recipe_dir/../utils/parse_options.sh"
cd "$recipe_dir"
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; exit 2; }
. ./cmd.sh

tag=${tag:-$config}
exp=exp/$tag
# `--stage N` given explicitly redoes those stages; otherwise finished work is skipped.
redo=${_po_set_stage:-0}

log() { echo "$(date '+%F %T') [zerospeech19] $*"; }
stage_on() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
# done_or_redo MARKER: true when the work behind MARKER must (re)run
need() { [ "$redo" = 1 ] || [ ! -f "$1" ]; }

log "tag=$tag config=$config quantizers='$quantizers' seeds='$seeds' stages $stage..$stop_stage"

# ---- stage 0: set-up and corpus ----------------------------------------------------------
. ./path.sh   # creates/activates the environment (fast when it exists)
if [ -z "$corpus" ]; then
  corpus=$recipe_dir/corpus/embedded
fi
if stage_on 0; then
  log "stage 0: set-up and corpus"
  if [ "$corpus" = "$recipe_dir/corpus/embedded" ]; then
    if need corpus/.embedded.done; then
      rm -rf corpus/embedded corpus/.embedded.done
      opts=(--out corpus/embedded --seed "$corpus_seed" --nj "$nj")
      [ "$corpus_utterances" -gt 0 ] && opts+=(--utterances "$corpus_utterances")
      $cpu_cmd corpus/log/make_corpus.log speechsq make-corpus "${opts[@]}"
      touch corpus/.embedded.done
    else
      log "embedded corpus exists (corpus/embedded)"
    fi
  fi
fi
[ -d "$corpus" ] || { echo "$0: corpus directory $corpus not found" >&2; exit 1; }

# ---- stage 1: data dirs ------------------------------------------------------------------
if stage_on 1; then
  log "stage 1: Kaldi data dirs from $corpus"
  if need data/.done; then
    rm -rf data
    $cpu_cmd data/log/prepare.log speechsq prepare-data --corpus zerospeech19 --root "$corpus" --out data
    for set in train parallel test; do
      speechsq validate-data-dir data/$set
    done
    touch data/.done
  fi
fi

# ---- stage 2: features -------------------------------------------------------------------
if stage_on 2; then
  log "stage 2: log-Mel features (zerospeech19 pipeline)"
  for set in train parallel test; do
    if need feats/$set/.done; then
      rm -rf feats/$set
      $cpu_cmd feats/log/$set.log speechsq compute-feats --data-dir data/$set --out feats/$set \
        --preprocessing zerospeech19 --nj "$nj"
      touch feats/$set/.done
    fi
  done
fi

# ---- stage 3: training -------------------------------------------------------------------
if stage_on 3; then
  log "stage 3: training ($quantizers; seeds $seeds)"
  ../steps/train.sh --quantizers "$quantizers" --seeds "$seeds" --config "$config" --ngpu "$ngpu" \
    --train-steps "$train_steps" --overrides "$overrides" --redo "$redo" --cmd "$train_cmd" \
    $exp data.feats_dir=feats/train data.data_dir=data/train
fi

# ---- stage 4: unit extraction ------------------------------------------------------------
if stage_on 4; then
  log "stage 4: unit extraction on the test set (ZeroSpeech 2019 submission tree)"
  ../steps/extract.sh --quantizers "$quantizers" --seeds "$seeds" --redo "$redo" --cmd "$decode_cmd" \
    $exp data/test feats/test --zerospeech
fi

# ---- stage 5: evaluation -----------------------------------------------------------------
if stage_on 5; then
  if need $exp/baseline/.done; then
    log "stage 5: ABX of the log-Mel features (baseline)"
    rm -rf $exp/baseline
    $cpu_cmd $exp/baseline/log/evaluate.log speechsq evaluate --exp-dir $exp/baseline \
      --baseline-feats feats/test --items data/test/items --abx-distance "$abx_distance"
    touch $exp/baseline/.done
  fi
  for q in $quantizers; do
    for seed in $seeds; do
      dir=$exp/$q/seed$seed
      if need $dir/.eval.done; then
        log "stage 5: evaluate $q seed $seed"
        $decode_cmd $dir/log/evaluate.log speechsq evaluate --checkpoint $dir/checkpoints/last.pt \
          --exp-dir $dir --mse-data data/parallel --mse-feats feats/parallel \
          --units $dir/units --items data/test/items --abx-distance "$abx_distance" \
          --probe-data data/test --probe-ali data/test/ali --no-progress
        touch $dir/.eval.done
      fi
    done
  done
fi

# ---- stage 6: report ---------------------------------------------------------------------
if stage_on 6; then
  log "stage 6: report"
  speechsq report --exp-dir $exp
  speechsq plots --exp-dir $exp --feats feats/parallel --data-dir data/parallel   # reconstructions.png, training_curves.png
  log "results: $recipe_dir/$exp/results.md"
fi
log "done"
