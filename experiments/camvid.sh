#!/usr/bin/env bash
# The CamVid experiment of experiments/RESULTS.md (issue 19), end to end on a CPU:
#   bash experiments/camvid.sh [RUNS_DIR]      (default runs/camvid; CamVid in ../shared/camvid)
# Stage 1 once; stage 2 for every seed of SEEDS (default "0 1 2"): CiSS-Net (camvid), the
# controls camvid_no_context, camvid_pmap and camvid_random_gate; for the first seed only
# camvid_gated and two studies, camvid_t8 (T = 8) and camvid_warm (the previous recipe: the
# Base Net warm-started from the PSPNet head, 600 steps); each in $RUNS/<run>_s<seed>. The
# recipe (steps, T, learning rates, ...) is the flagfiles' alone: this script adds only paths,
# the seed and the random gate's rate.
# Every step is skipped when its output exists, so an interrupted run continues (a training
# cut short resumes from its last checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/camvid}
CAMVID=${CAMVID:-../shared/camvid}
SEEDS=${SEEDS:-0 1 2}
DATA=$RUNS/data
PY=${PYTHON:-python}
EVAL_STEPS=0,1,2,3,4,5,6
mkdir -p "$RUNS"

# A training is done when its train_summary.json (written at each checkpoint) has reached
# the run's --max_steps.
finished() {
  [ -e "$1/train_summary.json" ] && $PY -c \
    'import json, sys; s = json.load(open(sys.argv[1])); sys.exit(s["step"] < s["max_steps"])' \
    "$1/train_summary.json"
}

[ -e "$DATA/val-00000-of-00001.tfrecord" ] ||
  $PY -m data_prep.build_tfrecords --dataset=camvid --input_dir="$CAMVID" --output_dir="$DATA"

# Stage 1: the small PSPNet from scratch (train() resumes or returns at --max_steps).
finished "$RUNS/pspnet" ||
  $PY -m ciss_tf.train --flagfile=experiments/camvid_pspnet.flags --data_dir="$DATA" \
    --model_dir="$RUNS/pspnet" 2>&1 | tee -a "$RUNS/pspnet.log"
# Every run is scored on val (eval.json) and on the test split (eval_test.json).
for split in val test; do
  out=$RUNS/pspnet/eval$([ $split = val ] || echo _$split).json
  [ -e "$out" ] ||
    $PY -m ciss_tf.evaluate --flagfile=experiments/camvid_pspnet.flags --data_dir="$DATA" \
      --checkpoint="$RUNS/pspnet" --eval_steps=0 --split=$split --output_json="$out"
done

# Stage 2 run $1 with seed $2 (extra flags after): train, then score val and test at the
# original 480x360 with the net seeing each image at the training scale (the flagfiles'
# --input_scale), t = 0..6.
stage2() {
  local run=$1 seed=$2
  shift 2
  local dir=$RUNS/${run}_s$seed
  finished "$dir" ||
    $PY -m ciss_tf.train --flagfile="experiments/$run.flags" --data_dir="$DATA" \
      --model_dir="$dir" --init_checkpoint="$RUNS/pspnet" --seed="$seed" "$@" 2>&1 |
      tee -a "$dir.log"
  local split out
  for split in val test; do
    out=$dir/eval$([ $split = val ] || echo _$split).json
    [ -e "$out" ] ||
      $PY -m ciss_tf.evaluate --flagfile="experiments/$run.flags" --data_dir="$DATA" \
        --checkpoint="$dir" --eval_steps=$EVAL_STEPS --split=$split "$@" --output_json="$out"
  done
}

FIRST_SEED=${SEEDS%% *}
for seed in $SEEDS; do
  stage2 camvid "$seed"
  stage2 camvid_no_context "$seed"
  stage2 camvid_pmap "$seed"
  # The random gate keeps what this seed's CiSS-Net sampled gate kept at the end of its
  # training (the trainer's mean over its last steps, in train_summary.json).
  rate=$($PY -c \
    'import json, sys; print(json.load(open(sys.argv[1]))["final_terms"]["kept_fraction"])' \
    "$RUNS/camvid_s$seed/train_summary.json")
  stage2 camvid_random_gate "$seed" --random_keep_rate="$rate"
done
stage2 camvid_gated "$FIRST_SEED"
stage2 camvid_t8 "$FIRST_SEED"
stage2 camvid_warm "$FIRST_SEED"

# Export for TF Serving (the first seed's CiSS-Net; T and the input scale of camvid.flags,
# images resized inside the graph).
[ -d "$RUNS/export" ] ||
  $PY -m ciss_tf.export --flagfile=experiments/camvid.flags --checkpoint="$RUNS/camvid_s$FIRST_SEED" \
    --export_dir="$RUNS/export"

# experiments/camvid_results.json, report.md (tables, targets, gates, wall times) and the
# context-map figure; scores the export.
$PY experiments/camvid_report.py --runs="$RUNS" --data_dir="$DATA" --seeds="${SEEDS// /,}"
