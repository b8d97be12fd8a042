#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): the highest load a policy serves live on the
# GPU with every model within its SLO. Runs `gpuslice gpu-run` on SCENARIO at each load scale
# (every model's rate times the scale) and appends one line per model and run to
# $OUT/capacity.csv; each run's CSV and plots go to $OUT/POLICY-xSCALE/ (-runN when repeated).
#
#   bash scripts/gpu-capacity.sh POLICY SCENARIO SCALE... [-- extra gpu-run flags]
#   bash scripts/gpu-capacity.sh temporal scenarios/gpu-trio.toml 0.6 0.7 0.8
# UNTIL_MISS=1: the scales in ascending order, stopping after the first that a model misses.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/held.sh
OUT=${OUT:-gpu-results}
POLICY=$1 SCENARIO=$2
shift 2
SCALES=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do SCALES+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
mkdir -p "$OUT"
[ -f "$OUT/capacity.csv" ] || echo "policy,load_scale,model,arrivals,completed,dropped,slo_attainment,goodput_rps,p99_ms,slo_ms" > "$OUT/capacity.csv"
for scale in "${SCALES[@]}"; do
  dir="$OUT/$POLICY-x$scale"
  # A repeated point gets its own folder.
  run=2; while [ -e "$dir" ]; do dir="$OUT/$POLICY-x$scale-run$run"; run=$((run + 1)); done
  echo "== $POLICY at load x$scale" | tee -a "$OUT/capacity-log.txt"
  mkdir -p "$dir"
  # The whole log stays beside the run ($LOG: a tracing filter, e.g. warn,gpuslice_policies=debug
  # for model-based's mode trials); the table goes to the capacity log.
  ./out/gpuslice --log "${LOG:-warn}" gpu-run --config "$SCENARIO" --policy "$POLICY" --load-scale "$scale" --out "$dir" "$@" \
    2>&1 | tee "$dir/run.log" | grep -E '^(│|gpu|GPU)' | tee -a "$OUT/capacity-log.txt"
  # summary.csv columns: model, ..., arrivals (8), completed, dropped, ..., slo_attainment (12),
  # goodput_rps (13), ..., p99_ms (18); slo_ms is column 6.
  tail -n +2 "$dir/summary.csv" 2>/dev/null \
    | awk -F, -v p="$POLICY" -v s="$scale" '{print p "," s "," $1 "," $8 "," $9 "," $10 "," $12 "," $13 "," $18 "," $6}' \
    >> "$OUT/capacity.csv"
  if [ "${UNTIL_MISS:-0}" = 1 ] && ! held "$dir/summary.csv" 12; then break; fi
done
