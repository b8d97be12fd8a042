#!/bin/bash
# Every policy's capacity on every shipped scenario (2 seeds), this session's simulator.
cd "$(dirname "$0")/../../.."
BIN=${BIN:-target/release/gpuslice}
OUT=bench/results/2026-12-04-sim-capacity-session24
for sc in default step-4x azure-llm gpu-trio gpu-step mixed-slo-trio bench-events; do
  ( time $BIN evaluate --capacity -c scenarios/$sc.toml --policies temporal,default-mps,triton-like,gslice,model-based,oracle --seeds 2 --quiet ) > $OUT/$sc.txt 2>&1
done
echo DONE > $OUT/DONE
