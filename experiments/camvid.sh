#!/usr/bin/env bash
# The CamVid experiment of experiments/RESULTS.md, end to end on a CPU:
#   bash experiments/camvid.sh [RUNS_DIR]      (default runs/camvid; CamVid in ../shared/camvid)
# Every step is skipped when its output exists, so an interrupted run continues.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/camvid}
CAMVID=${CAMVID:-../shared/camvid}
DATA=$RUNS/data
PY=${PYTHON:-python}
mkdir -p "$RUNS"

[ -e "$DATA/val-00000-of-00001.tfrecord" ] ||
  $PY -m data_prep.build_tfrecords --dataset=camvid --input_dir="$CAMVID" --output_dir="$DATA"

# Stage 1: the small PSPNet from scratch (train() resumes or returns at --max_steps).
$PY -m ciss_tf.train --flagfile=experiments/camvid_pspnet.flags --data_dir="$DATA" \
  --model_dir="$RUNS/pspnet" 2>&1 | tee -a "$RUNS/pspnet.log"

# Stage 2: CiSS-Net and the Table-4 variants on the same frozen features.
for run in camvid camvid_no_context camvid_pmap camvid_gated; do
  $PY -m ciss_tf.train --flagfile="experiments/$run.flags" --data_dir="$DATA" \
    --model_dir="$RUNS/$run" --init_checkpoint="$RUNS/pspnet" 2>&1 | tee -a "$RUNS/$run.log"
done

# Scores at the original 480x360, the net seeing each image at the training scale (0.5).
[ -e "$RUNS/pspnet/eval.json" ] ||
  $PY -m ciss_tf.evaluate --flagfile=experiments/camvid_pspnet.flags --data_dir="$DATA" \
    --checkpoint="$RUNS/pspnet" --eval_steps=0 --eval_scales=0.5 \
    --output_json="$RUNS/pspnet/eval.json"
for run in camvid camvid_no_context camvid_pmap camvid_gated; do
  [ -e "$RUNS/$run/eval.json" ] ||
    $PY -m ciss_tf.evaluate --flagfile="experiments/$run.flags" --data_dir="$DATA" \
      --checkpoint="$RUNS/$run" --eval_steps=0,2,4,6 --eval_scales=0.5 \
      --output_json="$RUNS/$run/eval.json"
done

# Export for TF Serving (T = 2, images resized by 0.5 inside the graph).
[ -d "$RUNS/export" ] ||
  $PY -m ciss_tf.export --flagfile=experiments/camvid.flags --checkpoint="$RUNS/camvid" \
    --export_dir="$RUNS/export" --num_steps=2 --input_scale=0.5

# Tables, gate statistics and the context-map figure; scores the export.
$PY experiments/camvid_report.py --runs="$RUNS" --data_dir="$DATA"
