#!/usr/bin/env bash
# Reproduces the variant table of docs/experiments.md:
#   simulate 1 M impressions (seed 7) -> Beam examples (L=200, last day = eval) -> train every
#   ranking variant + the retrieval model -> evaluate each with the simulator's ground truth ->
#   benchmarks/experiment_table.py prints the table.
#
# Usage: benchmarks/run_experiments.sh [OUT_DIR]    (default /work/data/experiments)
# Env:   LOG=/work/data/sim1m EXAMPLES=/work/data/sim1m_examples_L<HISTORY_LENGTH>  (made if missing)
#        EPOCHS=1 BATCH=512 MAX_TRAIN=  VARIANTS="full no_history no_feedback no_context shared_bottom"
#        HISTORY_LENGTH=200 (history events per example; the examples folder is per length;
#        docs/experiments.md's table was made with 200)
#        RETRIEVAL_VARIANTS="full"  SEEDS="0"  (each seed in OUT_DIR/seed_<n>/; the table averages them)
#        SIM_ARGS=  (more `tfrec-kuai simulate` flags for a new LOG, e.g. "--author_affinity 1.0")
#        CONFIG=    (a ranking config file for `tfrec-kuai train --config`, e.g. another expert width;
#                    default: the packaged tfrec_kuai/configs/ranking.json)
#        VARIANTS="" or RETRIEVAL_VARIANTS="": none (only make the log and the examples)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-/work/data/experiments}
LOG=${LOG:-/work/data/sim1m}
HISTORY_LENGTH=${HISTORY_LENGTH:-200}
EXAMPLES=${EXAMPLES:-/work/data/sim1m_examples_L$HISTORY_LENGTH}
EPOCHS=${EPOCHS:-1}
BATCH=${BATCH:-512}
MAX_TRAIN=${MAX_TRAIN:-}
VARIANTS=${VARIANTS-"full no_history no_feedback no_context shared_bottom"}   # set but empty: none
RETRIEVAL_VARIANTS=${RETRIEVAL_VARIANTS-full}   # set but empty: no retrieval
SEEDS=${SEEDS:-0}
SIM_ARGS=${SIM_ARGS:-}
CONFIG=${CONFIG:-}
mkdir -p "$OUT"

if [ ! -f "$LOG/ground_truth.csv" ]; then
  # shellcheck disable=SC2086  # SIM_ARGS is a list of flags
  $PY -m tfrec_kuai.cli simulate --output "$LOG" --impressions 1000000 --seed 7 $SIM_ARGS
fi
if [ ! -f "$EXAMPLES/metadata.json" ]; then
  $PY -m beam_pipelines.build_examples --input "$LOG/log_*.csv" --output "$EXAMPLES" \
    --video_features "$LOG/video_features_basic_sim.csv" --user_features "$LOG/user_features_sim.csv" \
    --history_length "$HISTORY_LENGTH" --eval_days 1
fi

extra=()
[ -n "$MAX_TRAIN" ] && extra+=(--max_train_examples "$MAX_TRAIN")
ranking_extra=("${extra[@]}")
[ -n "$CONFIG" ] && ranking_extra+=(--config "$CONFIG")
for seed in $SEEDS; do
  RUN="$OUT/seed_$seed"
  mkdir -p "$RUN"
  for v in $VARIANTS; do
    start=$(date +%s)
    $PY -m tfrec_kuai.cli train --examples "$EXAMPLES" --model_dir "$RUN/ranking_$v" --stage ranking \
      --variant "$v" --epochs "$EPOCHS" --batch_size "$BATCH" --seed "$seed" --restart --verbose 2 "${ranking_extra[@]}"
    $PY -m tfrec_kuai.cli evaluate --examples "$EXAMPLES" --model_dir "$RUN/ranking_$v" \
      --output "$RUN/eval_ranking_$v" --ground_truth "$LOG/ground_truth.csv"
    echo "seed $seed ranking $v: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
  done
  for v in $RETRIEVAL_VARIANTS; do
    start=$(date +%s)
    $PY -m tfrec_kuai.cli train --examples "$EXAMPLES" --model_dir "$RUN/retrieval_$v" --stage retrieval \
      --variant "$v" --epochs "$EPOCHS" --seed "$seed" --restart --verbose 2 "${extra[@]}"
    $PY -m tfrec_kuai.cli evaluate --examples "$EXAMPLES" --model_dir "$RUN/retrieval_$v" \
      --output "$RUN/eval_retrieval_$v"
    echo "seed $seed retrieval $v: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
  done
done
$PY benchmarks/experiment_table.py "$OUT" | tee "$OUT/table.md"
