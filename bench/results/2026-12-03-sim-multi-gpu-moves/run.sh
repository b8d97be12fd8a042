#!/bin/bash
# Multi-GPU capacity, model-based, first seed.
cd "$(dirname "$0")/../../.."
G=${GPUSLICE:-target/release/gpuslice}
O=${OUT:-bench/results/2026-12-03-sim-multi-gpu-moves}
run() { local label=$1; shift; echo "== $label: $*" >> $O/runs.txt; ( time $G evaluate --capacity --policies model-based --seeds 1 --quiet "$@" ) > $O/$label.txt 2>&1; grep -E "│ model-based" $O/$label.txt | cut -c1-60 >> $O/runs.txt; }
for n in 2 4 8; do for p in ffd balanced replicas replicas-jsq; do run step-4x-$n-$p -c scenarios/step-4x.toml --gpus $n --placement $p; done; done
for sc in gpu-trio mixed-slo-trio; do for p in ffd replicas replicas-jsq; do run $sc-4-$p -c scenarios/$sc.toml --gpus 4 --placement $p; done; done
for p in ffd balanced; do run shift-$p -c $O/shift-2gpu.toml --placement $p; run shift-$p-moves-12s -c $O/shift-2gpu.toml --placement $p --move-every-s 5; run shift-$p-moves-2s -c $O/shift-2gpu.toml --placement $p --move-every-s 5 --move-ready-s 2; done
echo DONE >> $O/runs.txt
