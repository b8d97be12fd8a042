#!/bin/bash
# The sim-vs-live table of this session's README: live brackets from this session's runs (the
# build with batches cut to a graph's size and the workers' warm-up) and, for the policies this
# session did not run again, from the sessions named; the simulator's predictions from
# sim-prediction/ (`evaluate --capacity --like-gpu-backend --calibration builtin:h200-calibration`).
cd "$(dirname "$0")/../../.."
B=bench/results D=$B/2026-12-04-h200-session24 S21=$B/2026-12-03-h200-session21-peer-table S20=$B/2026-12-03-h200-session20-edges
M8="default-mps 32/8 ms sent at 8"
python3 scripts/sim-vs-live.py --live \
  "$S21/baselines-temporal@temporal,triton-like" "$S21/baselines-gslice/capacity@triton-like" \
  "$S20/capacity.csv@default-mps" "$S20/default-edge/capacity.csv" "$B/2026-12-03-h200-session20-peers-live/capacity.csv@default-mps" \
  "gslice before the warm-up (s21)=$S21/baselines-gslice/capacity@gslice" "gslice before the warm-up (s21)=$S21/gslice-low/capacity@gslice" \
  "$D/triton-beside/capacity@gslice" "$D/repeat-cut/capacity@gslice" "$D/warm-up/capacity@gslice" \
  "$D/levels/capacity" "$D/triton-beside/capacity@model-based" "$D/edges-cut/capacity" "$D/repeat-cut/capacity@model-based" "$D/warm-up/capacity@model-based" \
  "$M8=$D/triton-beside/capacity-32-8ms-min8" "$M8=$D/edges-cut/capacity-32-8ms-min8" "$M8=$D/repeat-cut/capacity-32-8ms-min8" \
  "$M8, not cut (s22)=$B/2026-12-03-h200-session22-graphs-64/min-batch/capacity-32-8ms-min8" \
  "$D/triton-beside/triton" "$B/2026-12-03-h200-session22-graphs-64/model-based-64/triton" "$B/2026-12-03-h200-session22-graphs-64/graphs-32/triton" "$S21/triton-grid/triton@triton 8/100,triton 32/4000" \
  --sim $D/sim-prediction/gpu-trio $D/sim-prediction/mixed-slo-trio "$M8=$D/sim-prediction/dm-min8"
