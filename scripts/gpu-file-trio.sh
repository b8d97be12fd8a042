#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): issue 16's "ResNet-50 from a file serves the
# gpu-trio-like load with request bytes really used". The trio of scenarios/gpu-trio.toml with
# resnext50_32x4d replaced by resnet50_file (torchvision's ResNet-50 traced to TorchScript,
# seeded weights, fp32) at resnext50's rate, densenet121 and vgg16 from torchvision (fp16, as
# profiled), all three from one model repository, model-based on pool levels 10-100%:
#  1. the zero-input path: `gpu-run --model-repository` (arrivals generated in process, no
#     request bytes: the workers read zeros);
#  2. the byte path: `serve --backend gpu --model-repository` and `kserve-run` sending the same
#     arrivals through the inference protocol, each request a full input row (FP32 3x224x224,
#     588 KiB) that is decoded, copied into the worker's shared memory and to the GPU; the
#     server's per-stage times from /metrics (`gpuslice_stage_ms`);
#  3. the NetML path: the same server with `--netml-listen`, `netml-send --config` sending the
#     same arrivals as UDP packets (8 threads, top-5 replies), the node's NetML counters after.
# At each load scale given (default 1.0); PATHS (default "zero bytes netml") picks the paths, in
# that order; the NetML path's node moves images with NETML_TRANSFER (default: the node's default,
# the worker's GPU gather). Writes
# $OUT/file-trio.txt and the runs' outputs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
log="$OUT/file-trio.txt"
scales=("${@:-1.0}")
repo=/tmp/file-trio
rm -rf $repo && mkdir -p $repo
python3 scripts/export-example-models.py --resnet50 $repo > /dev/null || exit 1
# densenet121 and vgg16: the example resnet50's config, renamed, with the scenario's SLO, fp16.
for m in densenet121:25 vgg16:20; do
  mkdir -p "$repo/${m%%:*}"
  sed -e "s/torchvision:resnet50/torchvision:${m%%:*}/" -e "s/^slo_ms = 25/slo_ms = ${m##*:}\nfp16 = true/" \
    -e 's/^max_batch = 32/max_batch = 8/' examples/models/resnet50/config.toml > "$repo/${m%%:*}/config.toml"
done
sed -e 's/^name = "gpu-trio.*/name = "gpu-trio with ResNet-50 from a file"/' \
    -e 's/^name = "resnext50_32x4d"/name = "resnet50_file"\nprofile_model = "resnet50"/' \
    -e '/name = "resnet50_file"/,/arrivals/ s/^slo_ms = 20/slo_ms = 25/' \
    -e '/name = "resnet50_file"/,/arrivals/ s/^max_batch = 8/max_batch = 32/' \
    scenarios/gpu-trio.toml > /tmp/file-trio.toml
printf 'listen = "127.0.0.1:50051"\nmetrics_listen = "127.0.0.1:9100"\nnetml_listen = "127.0.0.1:9500"\nbackend = "gpu"\n[controller]\npolicy = "model-based"\ncontrol_interval_s = 0.25\ndrop_after_ms = 500\n[gpu]\npool_levels = [10, 20, 30, 45, 60, 80, 100]\n' > /tmp/file-trio-node.toml
# serve LOG [FLAG...]: starts the node on the repository (logging to LOG), sets $server once it serves
# gRPC and NetML.
serve() {
  ./out/gpuslice --log warn serve --config /tmp/file-trio-node.toml --model-repository $repo "${@:2}" \
    > /tmp/file-trio-serve.out 2> "$1" &
  server=$!
  until grep -q "^NetML on" /tmp/file-trio-serve.out; do sleep 0.5; kill -0 $server || { tail "$1"; return 1; }; done
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
for scale in "${scales[@]}"; do
  paths=" ${PATHS:-zero bytes netml} "
  if [[ $paths == *" zero "* ]]; then
    echo "== zero-input path: gpu-run x$scale" | tee -a "$log"
    ./out/gpuslice --log warn gpu-run -c /tmp/file-trio.toml --model-repository $repo --load-scale "$scale" \
      --out "$OUT/gpu-run-$scale" 2>&1 | tee -a "$log"
  fi
  if [[ $paths == *" bytes "* ]]; then
    echo "== byte path: serve + kserve-run x$scale" | tee -a "$log"
    serve "$OUT/serve-$scale.log" || exit 1
    ./out/gpuslice --log warn kserve-run --target 127.0.0.1:50051 -c /tmp/file-trio.toml --load-scale "$scale" \
      --out "$OUT/kserve-run-$scale" 2>&1 | tee -a "$log"
    curl -s 127.0.0.1:9100/metrics | grep -E '^gpuslice_(stage_ms|latency_p99_ms|completed_total|dropped_total|reallocations_total)' | tee -a "$log"
    kill -TERM $server; wait $server
  fi
  [[ $paths == *" netml "* ]] || continue
  echo "== NetML path (${NETML_TRANSFER:-gpu-gather}): serve + netml-send x$scale" | tee -a "$log"
  serve "$OUT/serve-netml-$scale.log" ${NETML_TRANSFER:+--netml-transfer $NETML_TRANSFER} || exit 1
  ./out/gpuslice --log warn netml-send --target 127.0.0.1:9500 -c /tmp/file-trio.toml --load-scale "$scale" \
    --threads 8 --top-k 5 --check none 2>&1 | tee -a "$log"
  curl -s 127.0.0.1:9100/metrics | grep -E '^gpuslice_(stage_ms|netml|completed_total|dropped_total)' | tee -a "$log"
  kill -TERM $server; wait $server
done
