#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): issue 21, NetML as the serving ingress.
# `serve --backend gpu --netml-listen` with resnet50 (torchvision, fp16) alone, model-based on
# pool levels 10-100%; at each rate given (default 1000 2000 images/s), 15 s of
#  - `netml-send` (8 sender threads, top-5 replies): images as UDP packets, reassembled, moved
#    into their batch by the node's transfer mode (the worker's GPU gather from the packet pool,
#    or CPU-Copy by the receive thread), served, answered by UDP;
#  - `kserve-run` at the same rate: the same images through the inference protocol (gRPC);
# with the node's /metrics (NetML counters and stage times, the model's stage times) after each.
# POLICY (default model-based) and MAX_BATCH (default 32, the model's config) change the node's
# policy and the model's largest batch: MAX_BATCH=8 serves at batch 8 at most. TRANSFERS (default
# "gpu-gather cpu-copy") are the node's --netml-transfer modes, one node each; gRPC runs beside the
# first. Writes $OUT/netml-serve.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
log="$OUT/netml-serve.txt"
rates=("${@:-1000 2000}")
read -r -a rates <<< "${rates[*]}"
repo=/tmp/netml-repo
rm -rf $repo && mkdir -p $repo/resnet50
sed -e 's/^slo_ms = 25/slo_ms = 25\nfp16 = true/' -e "s/^max_batch = 32/max_batch = ${MAX_BATCH:-32}/" \
  examples/models/resnet50/config.toml > $repo/resnet50/config.toml
printf 'listen = "127.0.0.1:50051"\nmetrics_listen = "127.0.0.1:9100"\nnetml_listen = "127.0.0.1:9500"\nbackend = "gpu"\n[controller]\npolicy = "%s"\ncontrol_interval_s = 0.25\ndrop_after_ms = 500\n[gpu]\npool_levels = [10, 20, 30, 45, 60, 80, 100]\n' "${POLICY:-model-based}" > /tmp/netml-node.toml
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$log"
echo "policy ${POLICY:-model-based}, max batch ${MAX_BATCH:-32}" | tee -a "$log"
sysctl net.core.rmem_max 2>/dev/null | tee -a "$log"
metrics() { curl -s 127.0.0.1:9100/metrics | grep -E '^gpuslice_(netml|stage_ms\{model="resnet50"|completed_total\{model="resnet50"|dropped_total\{model="resnet50")' | tee -a "$log"; }
first=1
for transfer in ${TRANSFERS:-gpu-gather cpu-copy}; do
  echo "== node with --netml-transfer $transfer" | tee -a "$log"
  ./out/gpuslice --log info serve --config /tmp/netml-node.toml --model-repository $repo --netml-transfer "$transfer" \
    > /tmp/netml-serve.out 2> "$OUT/netml-serve-$transfer.log" &
  server=$!
  until grep -q "^NetML on" /tmp/netml-serve.out; do sleep 0.5; kill -0 $server || { tail "$OUT/netml-serve-$transfer.log"; exit 1; }; done
  cat /tmp/netml-serve.out | tee -a "$log"
  for rate in "${rates[@]}"; do
    echo "== NetML ($transfer): netml-send at $rate images/s" | tee -a "$log"
    ./out/gpuslice --log warn netml-send --target 127.0.0.1:9500 --model resnet50 --rate "$rate" --seconds 15 \
      --threads 8 --top-k 5 --check none 2>&1 | tee -a "$log"
    metrics
    [ -n "$first" ] || continue
    printf 'name = "resnet50 at %s/s"\nseed = 1\nduration_s = 15\ncontrol_interval_s = 0.25\nsharing = "spatial"\n[[models]]\nname = "resnet50"\nslo_ms = 25\ngpu_pct = 30\nmax_batch = 32\nbatch_timeout_ms = 2\narrivals = { kind = "poisson", rate = %s }\n' "$rate" "$rate" > /tmp/netml-grpc.toml
    echo "== gRPC: kserve-run at $rate images/s" | tee -a "$log"
    ./out/gpuslice --log warn kserve-run --target 127.0.0.1:50051 -c /tmp/netml-grpc.toml 2>&1 | tee -a "$log"
    metrics
  done
  first=
  kill -TERM $server; wait $server
  grep -E "WARN|ERROR|packet pool" "$OUT/netml-serve-$transfer.log" | head -20 | tee -a "$log"
done
