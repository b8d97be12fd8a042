#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): how fast three models start (issue 17). One
# `serve --config configs/node-gpu.toml` (GPU backend, pool 20/30/45/60), `load-test --seconds 2`
# registering mobilenet_v3_large, resnet50 and vgg16 together; the serve log's `worker ready`
# lines give each worker's start-up phases. Writes $OUT/start-LABEL.log and load-LABEL.txt.
#   bash scripts/gpu-start.sh LABEL
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
label=${1:-start}
./out/gpuslice --log info serve --config configs/node-gpu.toml > "$OUT/serve-$label.out" 2> "$OUT/serve-$label.log" &
server=$!
until grep -q "^serving" "$OUT/serve-$label.out"; do sleep 0.5; kill -0 $server || { tail "$OUT/serve-$label.log"; exit 1; }; done
began=$(date +%s.%N)
./out/gpuslice --log info load-test --target 127.0.0.1:50051 --seconds 2 --infer-rps 300 --quiet > "$OUT/load-$label.txt" 2>&1
# Every level's full worker comes up behind the first (quick-start) one, the first level's too:
# wait for all four of every model.
for _ in $(seq 120); do
  [ "$(grep -c 'pool worker ready' "$OUT/serve-$label.log")" -ge 12 ] && break
  sleep 0.5
done
echo "whole pool after $(python3 -c "print(round($(date +%s.%N) - $began, 1))") s" | tee -a "$OUT/load-$label.txt"
grep -E 'model starting|worker ready|model registered|pool worker ready|quick-start worker retired' "$OUT/serve-$label.log" > "$OUT/start-$label.log"
kill -TERM $server; wait $server
