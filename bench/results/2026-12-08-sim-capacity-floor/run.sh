#!/bin/bash
# Every policy's capacity on every shipped scenario (2 seeds): model-based with the static grid
# as its floor (GRID_PER_TRIAL in turn), the oracle in hindsight.
cd "$(dirname "$0")/../../.."
BIN=${BIN:-target/release/gpuslice}
OUT=bench/results/2026-12-08-sim-capacity-floor
for sc in ${SCENARIOS:-azure-llm mixed-slo-trio step-4x default gpu-trio gpu-step bench-events}; do
  ( time $BIN evaluate --capacity -c scenarios/$sc.toml --policies temporal,default-mps,triton-like,gslice,model-based,oracle --seeds 2 --quiet ) > $OUT/$sc.txt 2>&1
done
echo DONE > $OUT/DONE
