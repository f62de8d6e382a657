#!/usr/bin/env bash
# ZeroSpeech 2019 English: discrete units with any quantizer, scored as SQ-VAE Tables 9-10.
#
#   bash recipes/zerospeech19/run.sh                       # embedded corpus, mini config, CPU
#   bash recipes/zerospeech19/run.sh --corpus /data/zs2019/english --items /data/zs2019/test.item \
#        --config paper --ngpu 1 --quantizers "vq_ema sq_gauss1 sq_gauss3 sq_gauss4" \
#        --vq-sigma2 "0.01 0.1 1 10" --seeds "1 2 3"
#
# Stages (each logs a timestamped line; --stage/--stop-stage select a range):
#   0 set-up and corpus (the embedded espeak-ng corpus when --corpus is not given)
#   1 Kaldi data dirs        data/{train,parallel,parallel_source,test}, ABX items in data/test/items
#   2 log-Mel features       feats/<set>/feats.scp
#   3 training               exp/<tag>/<run>/seed<N>/, <run> = quantizer (+ _sigma2_<v> for the
#                            VQ family over the --vq-sigma2 grid), --train-nj jobs at a time
#   4 unit extraction        exp/<tag>/<run>/seed<N>/units/ (ZeroSpeech submission tree)
#   5 evaluation             MSE (dB^2) on parallel, ABX across/within on test, bitrate, codebook,
#                            and the log-Mel features themselves as an ABX baseline
#   6 speech out             exp/<tag>/<run>/seed<N>/synthesis/: the test set in V001 and V002 (the
#                            ZeroSpeech 2019 synthesis part, zerospeech/test/<voice>_<id>.wav), the
#                            parallel set in its own voices (Griffin-Lim); synthesis_eval/: MCD, LSD,
#                            target-speaker share, ABX of the converted speech; exp/<tag>/samples/
#   7 report                 exp/<tag>/results.{json,md} with the paper's claims checked
#
# Before training, the inputs of every later stage are checked (ABX items, the parallel set
# for MSE, its speakers), so a missing file fails in minutes, not after training.
# Re-running skips work whose outputs are complete (each job writes a .done marker last);
# an explicit --stage N redoes stages N..stop-stage.
set -euo pipefail

# ---- defaults (each can be set with --name value; see --help) ----------------------------
stage=0                    # first stage to run
stop_stage=7               # last stage to run
corpus=""                  # ZeroSpeech 2019 english/ root; empty = embedded corpus
items=""                   # ABX item file of the test set (default: <corpus>/alignments/test.item)
corpus_utterances=800      # embedded corpus size (800: 160 test utterances, log-Mel ABX within 0.2 points across corpus seeds)
corpus_seed=0              # embedded corpus seed
quantizers="vq_ema sq_gauss1"   # registry names (speechsq.quantizers.list_quantizers())
vq_sigma2="0.1 10"         # decoder variance grid for the VQ family (Table 9: "0.01 0.1 1 10"; "" = config value)
seeds="1 2 3"              # one model per run and seed
config=mini                # paper | mini (speechsq/conf/experiment/)
tag=""                     # experiment tag (default: <config>)
nj=2                       # parallel jobs for features and evaluation
train_nj=0                 # training jobs at a time (0 = one per core on CPU, 1 with GPUs)
threads=""                 # intra-op threads per training job (default: cores // train-nj)
ngpu=0                     # GPUs for training (0 = CPU; >1 = torchrun data parallel)
train_steps=""             # override the configuration's number of training steps
abx_distance=cosine        # ABX frame distance for continuous features
synth_seeds=first          # speech out (stage 6) for these seeds ("first", "all" or a list; "" = no speech out)
synth_limit=""             # speech out of N utterances of each set, from each speaker in turn (0 = all, the ZeroSpeech submission; default: 20 on the embedded corpus, else all)
overrides=""               # extra hydra overrides for training, e.g. "quantizer.num_codes=256"

help_message="Usage: $0 [options]
ZeroSpeech 2019 English recipe: corpus -> data dirs -> features -> train -> units -> evaluation -> report."

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$recipe_dir/../utils/parse_options.sh"
cd "$recipe_dir"
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; exit 2; }
. ./cmd.sh

tag=${tag:-$config}
if [ -z "$synth_limit" ]; then synth_limit=$([ -z "$corpus" ] && echo 20 || echo 0); fi
exp=exp/$tag
# `--stage N` given explicitly redoes those stages; otherwise finished work is skipped.
redo=${_po_set_stage:-0}

log() { echo "$(date '+%F %T') [zerospeech19] $*"; }
die() { echo "$0: error: $*" >&2; exit 2; }
stage_on() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
# done_or_redo MARKER: true when the work behind MARKER must (re)run
need() { [ "$redo" = 1 ] || [ ! -f "$1" ]; }

. ../utils/runs.sh
if [ "$train_nj" -le 0 ]; then train_nj=$([ "$ngpu" -gt 0 ] && echo 1 || nproc); fi
runs=$exp/runs.txt          # one line per model: <run> <quantizer> <seed> [overrides] (utils/runs.sh)
log "tag=$tag config=$config quantizers='$quantizers' vq-sigma2='$vq_sigma2' seeds='$seeds' stages $stage..$stop_stage"

# ---- stage 0: set-up and corpus ----------------------------------------------------------
. ./path.sh   # creates/activates the environment (fast when it exists)
# the runs (utils/runs.sh), written first: an unknown quantizer fails here, before any work
if [ "$stop_stage" -ge 3 ] && { [ ! -s "$runs" ] || stage_on 3; }; then
  write_runs "$runs" "$config" "$quantizers" "$vq_sigma2" "$seeds"
fi
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
    if [ -n "$items" ]; then
      [ -s "$items" ] || die "--items $items does not exist or is empty"
      cp "$items" data/test/items
    fi
    if [ "$stop_stage" -ge 5 ] && [ ! -s data/test/items ]; then
      die "no ABX item file for the test set ($corpus/alignments/test.item does not exist): pass --items PATH, \
or make one from phone alignments with 'speechsq make-items --ali ALI --utt2spk data/test/utt2spk --out ITEMS', \
or stop before evaluation with --stop-stage 4"
    fi
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

# ---- before training: the inputs of every later stage ----------------------------------
check_inputs() {
  local set
  for set in train parallel test; do
    [ -f feats/$set/feats.scp ] || die "feats/$set is missing: run stage 2 (--stage 2)"
  done
  if [ "$stop_stage" -ge 5 ]; then
    [ -s data/test/items ] || die "data/test/items (ABX) is missing: re-run stage 1 with --items PATH"
    speechsq validate-data-dir data/test > /dev/null || die "data/test does not validate (its items?): speechsq validate-data-dir data/test"
    # MSE reconstructs each parallel utterance with its own speaker's embedding
    local unknown
    unknown=$(cut -d' ' -f2 data/parallel/utt2spk | sort -u | grep -vxF -f <(cut -d' ' -f2 data/train/utt2spk | sort -u) || true)
    [ -z "$unknown" ] || die "speaker(s) of data/parallel not in the training set: $(echo $unknown); MSE needs their embeddings"
  fi
  if [ "$stop_stage" -ge 6 ] && [ -n "$synth_seeds" ]; then  # speech out converts into the target voices
    local voice
    for voice in V001 V002; do
      grep -q " $voice\$" data/train/utt2spk || die "target voice $voice is not a training speaker (speech out, stage 6); or --synth-seeds ''"
    done
  fi
}

if stage_on 3 || stage_on 4 || stage_on 5; then
  check_inputs
  log "runs: $(cut -d' ' -f1 "$runs" | sort -u | tr '\n' ' ')x seeds '$seeds' ($(wc -l < "$runs") models)"
fi

# ---- stage 3: training -------------------------------------------------------------------
if stage_on 3; then
  log "stage 3: training ($train_nj job(s) at a time)"
  ../steps/train.sh --runs "$runs" --config "$config" --nj "$train_nj" --threads "$threads" --ngpu "$ngpu" \
    --train-steps "$train_steps" --overrides "$overrides" --redo "$redo" --cmd "$train_cmd" \
    $exp data.feats_dir=feats/train data.data_dir=data/train
fi

# ---- stage 4: unit extraction ------------------------------------------------------------
if stage_on 4; then
  log "stage 4: unit extraction on the test set (ZeroSpeech 2019 submission tree)"
  ../steps/extract.sh --runs "$runs" --redo "$redo" --cmd "$decode_cmd" \
    $exp data/test feats/test --zerospeech
fi

# ---- stage 5: evaluation -----------------------------------------------------------------
evaluate_one() {  # run seed
  local dir=$exp/$1/seed$2
  OMP_NUM_THREADS=1 $decode_cmd $dir/log/evaluate.log speechsq evaluate --checkpoint $dir/checkpoints/last.pt \
    --exp-dir $dir --mse-data data/parallel --mse-feats feats/parallel \
    --units $dir/units --items data/test/items --abx-distance "$abx_distance" \
    --probe-data data/test --probe-ali data/test/ali --no-progress < /dev/null > /dev/null \
    && touch $dir/.eval.done
}
if stage_on 5; then
  log "stage 5: evaluation ($nj job(s) at a time)"
  if need $exp/baseline/.done; then
    rm -rf $exp/baseline
    (OMP_NUM_THREADS=1 $cpu_cmd $exp/baseline/log/evaluate.log speechsq evaluate --exp-dir $exp/baseline \
      --baseline-feats feats/test --items data/test/items --abx-distance "$abx_distance" < /dev/null > /dev/null \
      && touch $exp/baseline/.done) &
  fi
  for_each_run "$runs" "$nj" .eval.done evaluate_one
  wait || true  # the baseline
  [ -f $exp/baseline/.done ] || { echo "$0: evaluation of the log-Mel baseline failed; see $exp/baseline/log/evaluate.log" >&2; exit 1; }
fi

# ---- stage 6: speech out -----------------------------------------------------------------
if stage_on 6 && [ -n "$synth_seeds" ]; then
  log "stage 6: speech out: test set in V001 and V002 (ZeroSpeech 2019 synthesis), parallel set in its own voices"
  synth_runs $runs "$synth_seeds" > $exp/synthesis_runs.txt
  ../steps/synthesize.sh --runs $exp/synthesis_runs.txt --voices "V001 V002" --items data/test/items --nj "$nj" \
    --limit "$synth_limit" --redo "$redo" --cmd "$decode_cmd" $exp data/test data/parallel data/train feats/train
fi

# ---- stage 7: report ---------------------------------------------------------------------
if stage_on 7; then
  log "stage 7: report"
  speechsq report --exp-dir $exp --claims sqvae_zerospeech19
  speechsq plots --exp-dir $exp --feats feats/parallel --data-dir data/parallel   # reconstructions.png, training_curves.png
  log "results: $recipe_dir/$exp/results.md"
fi
log "done"
