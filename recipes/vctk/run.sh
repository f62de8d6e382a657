#!/usr/bin/env bash
# VCTK 0.80: log-Mel reconstruction with any quantizer, scored as SQ-VAE Tables 3 and 9 (MSE, dB^2).
#
#   bash recipes/vctk/run.sh                                 # embedded corpus in the VCTK layout, mini, CPU
#   bash recipes/vctk/run.sh --corpus /data/VCTK-Corpus --config paper --ngpu 1 \
#        --quantizers "vq_ema sq_gauss1 sq_gauss3 sq_gauss4" --seeds "1 2 3"
#
# Stages: 0 set-up and corpus; 1 data dirs (deterministic 90/10 split); 2 features (48 kHz ->
# 24 kHz ParallelWaveGAN-style log-Mel, standardised with training-set statistics); 3 training;
# 4 unit extraction on the test split; 5 evaluation (MSE in dB^2 after undoing the
# standardisation, bitrate, codebook statistics); 6 report.
set -euo pipefail

# ---- defaults (each can be set with --name value; see --help) ----------------------------
stage=0                    # first stage to run
stop_stage=6               # last stage to run
corpus=""                  # VCTK 0.80 root (with wav48/ and txt/); empty = embedded corpus
corpus_utterances=0        # embedded corpus size (0 = the generator's default)
corpus_seed=0              # embedded corpus seed
quantizers="vq_ema sq_gauss1"   # registry names (speechsq.quantizers.list_quantizers())
seeds="1"                  # one model per quantizer and seed
config=mini                # paper | mini (speechsq/conf/experiment/)
tag=""                     # experiment tag (default: <config>)
nj=2                       # parallel jobs for features
ngpu=0                     # GPUs for training (0 = CPU; >1 = torchrun data parallel)
train_steps=""             # override the configuration's number of training steps
overrides=""               # extra hydra overrides for training

help_message="Usage: $0 [options]
VCTK 0.80 recipe: corpus -> data dirs -> features -> train -> units -> MSE evaluation -> report."

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$recipe_dir/../utils/parse_options.sh"
cd "$recipe_dir"
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; exit 2; }
. ./cmd.sh

tag=${tag:-$config}
exp=exp/$tag
redo=${_po_set_stage:-0}   # an explicit --stage redoes finished work

log() { echo "$(date '+%F %T') [vctk] $*"; }
stage_on() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
need() { [ "$redo" = 1 ] || [ ! -f "$1" ]; }

log "tag=$tag config=$config quantizers='$quantizers' seeds='$seeds' stages $stage..$stop_stage"

# ---- stage 0: set-up and corpus ----------------------------------------------------------
. ./path.sh
embedded=$recipe_dir/corpus/embedded
corpus=${corpus:-$embedded}
if stage_on 0; then
  log "stage 0: set-up and corpus"
  if [ "$corpus" = "$embedded" ] && need corpus/.embedded.done; then
    rm -rf corpus/embedded corpus/.embedded.done
    opts=(--out corpus/embedded --layout vctk --seed "$corpus_seed" --nj "$nj")
    [ "$corpus_utterances" -gt 0 ] && opts+=(--utterances "$corpus_utterances")
    $cpu_cmd corpus/log/make_corpus.log speechsq make-corpus "${opts[@]}"
    touch corpus/.embedded.done
  fi
fi
[ -d "$corpus" ] || { echo "$0: corpus directory $corpus not found" >&2; exit 1; }

# ---- stage 1: data dirs ------------------------------------------------------------------
if stage_on 1 && need data/.done; then
  log "stage 1: Kaldi data dirs from $corpus (90/10 split)"
  rm -rf data
  $cpu_cmd data/log/prepare.log speechsq prepare-data --corpus vctk --root "$corpus" --out data
  for set in train test; do speechsq validate-data-dir data/$set; done
  touch data/.done
fi

# ---- stage 2: features -------------------------------------------------------------------
if stage_on 2; then
  log "stage 2: log-Mel features (vctk pipeline; statistics from train only)"
  for set in train test; do
    if need feats/$set/.done; then
      rm -rf feats/$set
      cmvn=()
      [ $set != train ] && cmvn=(--cmvn-from feats/train/cmvn.npz)
      $cpu_cmd feats/log/$set.log speechsq compute-feats --data-dir data/$set --out feats/$set \
        --preprocessing vctk --nj "$nj" "${cmvn[@]}"
      touch feats/$set/.done
    fi
  done
fi

# ---- stage 3: training -------------------------------------------------------------------
if stage_on 3; then
  log "stage 3: training ($quantizers; seeds $seeds)"
  ../steps/train.sh --quantizers "$quantizers" --seeds "$seeds" --config "$config" --ngpu "$ngpu" \
    --train-steps "$train_steps" --overrides "$overrides" --redo "$redo" --cmd "$train_cmd" \
    $exp preprocessing=vctk data.feats_dir=feats/train data.data_dir=data/train
fi

# ---- stage 4: unit extraction ------------------------------------------------------------
if stage_on 4; then
  log "stage 4: unit extraction on the test split"
  ../steps/extract.sh --quantizers "$quantizers" --seeds "$seeds" --redo "$redo" --cmd "$decode_cmd" \
    $exp data/test feats/test
fi

# ---- stage 5: evaluation -----------------------------------------------------------------
if stage_on 5; then
  for q in $quantizers; do
    for seed in $seeds; do
      dir=$exp/$q/seed$seed
      if need $dir/.eval.done; then
        log "stage 5: evaluate $q seed $seed (MSE in dB^2 on the test split)"
        $decode_cmd $dir/log/evaluate.log speechsq evaluate --checkpoint $dir/checkpoints/last.pt \
          --exp-dir $dir --mse-data data/test --mse-feats feats/test --cmvn feats/train/cmvn.npz \
          --units $dir/units --no-progress
        touch $dir/.eval.done
      fi
    done
  done
fi

# ---- stage 6: report ---------------------------------------------------------------------
if stage_on 6; then
  log "stage 6: report"
  speechsq report --exp-dir $exp
  speechsq plots --exp-dir $exp --feats feats/test --data-dir data/test   # reconstructions.png, training_curves.png
  log "results: $recipe_dir/$exp/results.md"
fi
log "done"
