#!/usr/bin/env bash
# Reproduces docs/online.md: the world of docs/experiments.md (1 M impressions, seed 7) -> Beam
# examples (L = 200, last day = eval) -> retrieval `full` + ranking `full`, `no_feedback`,
# `shared_bottom` (training seed 0) -> exports with every ranked candidate returned ->
# benchmarks/online_experiment.py (the blend search, then the paired A/B on three world seeds).
#
# Usage: benchmarks/run_online.sh [OUT_DIR]    (default /work/data/online)
# Env:   LOG=/work/data/sim1m EXAMPLES=/work/data/sim1m_examples_L200 (made if missing, shared with
#        benchmarks/run_experiments.sh)  USERS=1000 TUNE_USERS=500 SEEDS="101 102 103"
# A step whose output exists is not run again (a model: its history.json, written when training ends). About 35 min of training and 15 min of A/B on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-/work/data/online}
LOG=${LOG:-/work/data/sim1m}
EXAMPLES=${EXAMPLES:-/work/data/sim1m_examples_L200}
USERS=${USERS:-1000}
TUNE_USERS=${TUNE_USERS:-500}
SEEDS=${SEEDS:-101 102 103}
M=$OUT/models E=$OUT/exports
mkdir -p "$M" "$E"

[ -f "$LOG/ground_truth.csv" ] || $PY -m tfrec_kuai.cli simulate --output "$LOG" --impressions 1000000 --seed 7
[ -f "$EXAMPLES/metadata.json" ] || $PY -m beam_pipelines.build_examples --input "$LOG/log_*.csv" --output "$EXAMPLES" \
  --video_features "$LOG/video_features_basic_sim.csv" --user_features "$LOG/user_features_sim.csv" \
  --history_length 200 --eval_days 1
[ -f "$M/retrieval_full/history.json" ] || $PY -m tfrec_kuai.cli train --examples "$EXAMPLES" \
  --model_dir "$M/retrieval_full" --stage retrieval --variant full --epochs 1 --seed 0 --restart --verbose 2
for v in full no_feedback shared_bottom; do
  [ -f "$M/ranking_$v/history.json" ] || $PY -m tfrec_kuai.cli train --examples "$EXAMPLES" \
    --model_dir "$M/ranking_$v" --stage ranking --variant "$v" --epochs 1 --batch_size 512 --seed 0 --restart --verbose 2
  [ -d "$E/$v" ] || $PY -m tfrec_kuai.cli export --ranking_dir "$M/ranking_$v" --retrieval_dir "$M/retrieval_full" \
    --examples "$EXAMPLES" --export_base "$E" --model_name "$v" --top_n 100 --retrieve_k 100
done
# shellcheck disable=SC2086  # SEEDS is a list
$PY benchmarks/online_experiment.py --world "$LOG" --exports "$E" --output "$OUT/ab" --users "$USERS" \
  --tune_users "$TUNE_USERS" --seeds $SEEDS
