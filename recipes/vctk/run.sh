#!/usr/bin/env bash
# VCTK 0.80: log-Mel reconstruction with any quantizer, scored as SQ-VAE Tables 3 and 9 (MSE, dB^2).
#
#   bash recipes/vctk/run.sh                                 # embedded corpus in the VCTK layout, mini, CPU
#   bash recipes/vctk/run.sh --corpus /data/VCTK-Corpus --config paper --ngpu 1 \
#        --quantizers "vq_ema sq_gauss1 sq_gauss3 sq_gauss4" --vq-sigma2 "0.01 0.1 1 10" --seeds "1 2 3"
#
# Stages: 0 set-up and corpus; 1 data dirs (deterministic 90/10 split); 2 features (48 kHz ->
# 24 kHz ParallelWaveGAN-style log-Mel, standardised with training-set statistics); 3 training
# (one model per quantizer, VQ-family decoder variance of the --vq-sigma2 grid and seed,
# --train-nj at a time); 4 unit extraction on the test split; 5 evaluation (MSE in dB^2 after
# undoing the standardisation, bitrate, codebook statistics); 6 speech out: the test split in
# two training voices and in its own voices (Griffin-Lim), with MCD/LSD and target-speaker
# measures; 7 report with the paper's claims (SQ-VAE Table 9, VCTK column) checked.
set -euo pipefail

# ---- defaults (each can be set with --name value; see --help) ----------------------------
stage=0                    # first stage to run
stop_stage=7               # last stage to run
corpus=""                  # VCTK 0.80 root (with wav48/ and txt/); empty = embedded corpus
corpus_utterances=0        # embedded corpus size (0 = the generator's default)
corpus_seed=0              # embedded corpus seed
quantizers="vq_ema sq_gauss1"   # registry names (speechsq.quantizers.list_quantizers())
vq_sigma2="0.1 1 10"       # decoder variance grid for the VQ family (Table 9: "0.01 0.1 1 10"; "" = config value)
seeds="1 2 3"              # one model per run and seed
config=mini                # paper | mini (speechsq/conf/experiment/)
tag=""                     # experiment tag (default: <config>)
nj=2                       # parallel jobs for features and evaluation
train_nj=0                 # training jobs at a time (0 = one per core on CPU, 1 with GPUs)
threads=""                 # intra-op threads per training job (default: cores // train-nj)
ngpu=0                     # GPUs for training (0 = CPU; >1 = torchrun data parallel)
train_steps=""             # override the configuration's number of training steps
synth_seeds=first          # speech out (stage 6) for these seeds ("first", "all" or a list; "" = no speech out)
synth_limit=0              # speech out of N utterances of each set only, from each speaker in turn (0 = all)
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
die() { echo "$0: error: $*" >&2; exit 2; }
stage_on() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
need() { [ "$redo" = 1 ] || [ ! -f "$1" ]; }

. ../utils/runs.sh
if [ "$train_nj" -le 0 ]; then train_nj=$([ "$ngpu" -gt 0 ] && echo 1 || nproc); fi
runs=$exp/runs.txt          # one line per model: <run> <quantizer> <seed> [overrides] (utils/runs.sh)
log "tag=$tag config=$config quantizers='$quantizers' vq-sigma2='$vq_sigma2' seeds='$seeds' stages $stage..$stop_stage"

# ---- stage 0: set-up and corpus ----------------------------------------------------------
. ./path.sh
# the runs (utils/runs.sh), written first: an unknown quantizer fails here, before any work
if [ "$stop_stage" -ge 3 ] && { [ ! -s "$runs" ] || stage_on 3; }; then
  write_runs "$runs" "$config" "$quantizers" "$vq_sigma2" "$seeds"
fi
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
# ---- before training: the inputs of every later stage ----------------------------------
check_inputs() {
  local set
  for set in train test; do
    [ -f feats/$set/feats.scp ] || die "feats/$set is missing: run stage 2 (--stage 2)"
  done
  [ -f feats/train/cmvn.npz ] || die "feats/train/cmvn.npz is missing (MSE in dB^2 undoes the standardisation): re-run stage 2"
  local unknown  # MSE reconstructs each test utterance with its own speaker's embedding
  unknown=$(cut -d' ' -f2 data/test/utt2spk | sort -u | grep -vxF -f <(cut -d' ' -f2 data/train/utt2spk | sort -u) || true)
  [ -z "$unknown" ] || die "speaker(s) of data/test not in the training set: $(echo $unknown); MSE needs their embeddings"
}

if stage_on 3 || stage_on 4 || stage_on 5; then
  check_inputs
  log "runs: $(cut -d' ' -f1 "$runs" | sort -u | tr '\n' ' ')x seeds '$seeds' ($(wc -l < "$runs") models)"
fi

if stage_on 3; then
  log "stage 3: training ($train_nj job(s) at a time)"
  ../steps/train.sh --runs "$runs" --config "$config" --nj "$train_nj" --threads "$threads" --ngpu "$ngpu" \
    --train-steps "$train_steps" --overrides "$overrides" --redo "$redo" --cmd "$train_cmd" \
    $exp preprocessing=vctk data.feats_dir=feats/train data.data_dir=data/train
fi

if stage_on 4; then
  log "stage 4: unit extraction on the test split"
  ../steps/extract.sh --runs "$runs" --redo "$redo" --cmd "$decode_cmd" $exp data/test feats/test
fi

evaluate_one() {  # run seed
  local dir=$exp/$1/seed$2
  OMP_NUM_THREADS=1 $decode_cmd $dir/log/evaluate.log speechsq evaluate --checkpoint $dir/checkpoints/last.pt \
    --exp-dir $dir --mse-data data/test --mse-feats feats/test --cmvn feats/train/cmvn.npz \
    --units $dir/units --no-progress < /dev/null > /dev/null \
    && touch $dir/.eval.done
}
if stage_on 5; then
  log "stage 5: evaluation, MSE in dB^2 on the test split ($nj job(s) at a time)"
  for_each_run "$runs" "$nj" .eval.done evaluate_one
fi

if stage_on 6 && [ -n "$synth_seeds" ]; then  # speech out: the test split in two training voices and in its own voices
  voices=$(cut -d' ' -f1 data/train/spk2utt | head -n 2 | xargs)
  log "stage 6: speech out: test split in $voices and in its own voices (Griffin-Lim), measures"
  synth_runs $runs "$synth_seeds" > $exp/synthesis_runs.txt
  ../steps/synthesize.sh --runs $exp/synthesis_runs.txt --voices "$voices" --zerospeech 0 --nj "$nj" \
    --limit "$synth_limit" --redo "$redo" --cmd "$decode_cmd" $exp data/test data/test data/train feats/train
fi

if stage_on 7; then
  log "stage 7: report"
  speechsq report --exp-dir $exp --claims sqvae_vctk
  speechsq plots --exp-dir $exp --feats feats/test --data-dir data/test   # reconstructions.png, training_curves.png
  log "results: $recipe_dir/$exp/results.md"
fi
log "done"
