#!/bin/bash
cd "$(dirname "$0")/../../.."
for sc in default step-4x azure-llm gpu-trio gpu-step mixed-slo-trio bench-events; do
  ( time target/release/gpuslice evaluate --capacity -c scenarios/$sc.toml --policies temporal,default-mps,triton-like,gslice,model-based,oracle --seeds 2 --quiet ) > bench/results/2026-12-03-sim-capacity-session23/$sc.txt 2>&1
done
echo DONE > bench/results/2026-12-03-sim-capacity-session23/DONE
