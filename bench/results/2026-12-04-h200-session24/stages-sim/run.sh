#!/bin/bash
# The simulated stage times set beside this session's live stages.csv (README, "Stage by stage").
cd "$(dirname "$0")/../../../.."
D=bench/results/2026-12-04-h200-session24
BIN=${BIN:-target/release/gpuslice}
$BIN simulate -c $D/stages-sim/mixed-static30.toml --calibration builtin:h200-calibration --load-scale 0.8 \
  --like-gpu-backend --stages --quiet --out /tmp/mixed-static30
$BIN simulate -c $D/sim-prediction/gpu-trio-32-8ms-min8.toml --sharing default-mps --calibration builtin:h200-calibration \
  --load-scale 1.2 --like-gpu-backend --stages --quiet --out /tmp/gpu-trio-min8
