#!/usr/bin/env bash
# On the GPU machine: what really moving request bytes costs. One `serve --config
# configs/node-gpu.toml` (mobilenet_v3_large, resnet50, vgg16 registered by the load test), then
# `load-test` at the same rate twice: empty payloads (the server serves zeros) and full 3x224x224
# FP32 rows (588 KiB each, copied into the workers' shared memory). Writes $OUT/input-cost.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
RPS=${RPS:-1500}; SECONDS_EACH=${SECONDS_EACH:-20}
./out/gpuslice --log warn serve --config configs/node-gpu.toml > /tmp/serve.out 2> /tmp/serve.err &
server=$!
until grep -q "^serving" /tmp/serve.out; do sleep 0.5; kill -0 $server || { tail /tmp/serve.err; exit 1; }; done
for mode in "" --with-inputs; do
  echo "== load-test ${mode:-(empty payloads)} at $RPS/s for ${SECONDS_EACH}s" | tee -a "$OUT/input-cost.txt"
  ./out/gpuslice --log warn load-test --target 127.0.0.1:50051 --seconds "$SECONDS_EACH" --infer-rps "$RPS" \
    --control-rps 20 $mode 2>&1 | tee -a "$OUT/input-cost.txt"
done
kill -TERM $server; wait $server
