#!/usr/bin/env bash
# On the GPU machine: a real Triton Inference Server beside gpuslice (issue 18). Triton comes from
# the nvidia-pytriton wheel (PyPI), whose tritonserver binary and Python backend are all that is
# used here: the wheel is too large to carry whole, so the build machine unpacks what runs
# (scripts/triton-pack.sh: .trt/trt.tar.xz.part-*, carried over two calls, and gpuslice itself as
# .trt-bin/gpuslice.xz). Each model
# is served by the Python backend as torch CUDA graphs (scripts/triton/model.py), one instance on
# the GPU, Triton's dynamic batcher in front; `gpuslice kserve-run` sends the scenario's arrivals
# and measures each model's SLO attainment as `gpu-run` does.
#
#   bash scripts/triton-peer.sh SCENARIO MAX_BATCH DELAY_US SCALE...
# Appends to $OUT/capacity.csv (policy "triton MAX_BATCH/DELAY_US") and leaves each run's
# summary under $OUT/triton-MAX_BATCH-DELAY_US-xSCALE/. UNTIL_MISS=1: stop after the first scale
# that a model misses (give them ascending). INPUT_COPY=1: each batch copies its rows of an FP32
# image from the host to the GPU first, as gpuslice's workers do (policy "triton ... copy",
# folders triton-MAX_BATCH-DELAY_US-copy-xSCALE).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/held.sh
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
SCENARIO=$1 MAX_BATCH=$2 DELAY_US=$3; shift 3
COPY=${INPUT_COPY:-0}; TAG=$MAX_BATCH-$DELAY_US; [ "$COPY" = 1 ] && TAG=$TAG-copy
# Unpacked into an ignored folder of the repository, which stays on a warm machine between calls.
T=$PWD/.trt-run/trt
if [ ! -x $T/pytriton/tritonserver/bin/tritonserver ]; then
  mkdir -p .trt-run && cat .trt/trt.tar.xz.part-* | tar xJf - -C .trt-run || exit 1
  cp $T/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub $T/pytriton/tritonserver/backends/python/
fi
[ -x out/gpuslice ] || { mkdir -p out && xz -dc .trt-bin/gpuslice.xz > out/gpuslice && chmod +x out/gpuslice; }
export LD_LIBRARY_PATH=$T/nvidia_pytriton.libs:${LD_LIBRARY_PATH:-}
# A model repository for the scenario's models: the same batching for every model, as a user
# configures Triton (preferred sizes: the powers of two from 8 up to MAX_BATCH).
repo=/tmp/triton-models-$MAX_BATCH-$DELAY_US; rm -rf $repo
preferred=$(python3 -c "print(', '.join(str(b) for b in (8, 16, 32, 64) if b <= $MAX_BATCH))")
for model in $(python3 -c "import tomllib, sys; print(' '.join(m['name'] for m in tomllib.load(open(sys.argv[1], 'rb'))['models']))" "$SCENARIO"); do
  mkdir -p $repo/$model/1 && cp scripts/triton/model.py $repo/$model/1/model.py
  cat > $repo/$model/config.pbtxt <<PBTXT
name: "$model"
backend: "python"
max_batch_size: $MAX_BATCH
input [ { name: "seed" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "class" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]
dynamic_batching { preferred_batch_size: [ $preferred ] max_queue_delay_microseconds: $DELAY_US }
parameters: { key: "arch" value: { string_value: "$model" } }
parameters: { key: "input_copy" value: { string_value: "$COPY" } }
PBTXT
done
$T/pytriton/tritonserver/bin/tritonserver --model-repository=$repo \
  --backend-directory=$T/pytriton/tritonserver/backends --grpc-port=8001 --http-port=8000 \
  --allow-metrics=false --exit-on-error=true > /tmp/triton.log 2>&1 &
triton=$!
started=$(date +%s)
until python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/v2/health/ready", timeout=1)' 2>/dev/null; do
  sleep 1
  if ! kill -0 $triton 2>/dev/null || [ $(( $(date +%s) - started )) -gt 240 ]; then
    echo "Triton did not become ready:"; tail -40 /tmp/triton.log; kill $triton 2>/dev/null; cp /tmp/triton.log "$OUT/"; exit 1
  fi
done
echo "Triton ready in $(( $(date +%s) - started )) s ($MAX_BATCH / $DELAY_US us)" | tee -a "$OUT/triton-log.txt"
[ -f "$OUT/capacity.csv" ] || echo "policy,load_scale,model,arrivals,completed,dropped,slo_attainment,goodput_rps,p99_ms,slo_ms" > "$OUT/capacity.csv"
for scale in "$@"; do
  dir="$OUT/triton-$TAG-x$scale"
  ./out/gpuslice --log warn kserve-run --target 127.0.0.1:8001 --config "$SCENARIO" --load-scale "$scale" --out "$dir" 2>&1 | tee -a "$OUT/triton-log.txt"
  # summary.csv: model, slo_ms, arrivals, answered, failed, within_slo, slo_attainment, p50_ms, p99_ms
  tail -n +2 "$dir/summary.csv" 2>/dev/null | awk -F, -v p="triton ${TAG//-//}" -v s="$scale" \
    '{print p "," s "," $1 "," $3 "," $4 "," $5 "," $7 ",," $9 "," $2}' >> "$OUT/capacity.csv"
  if [ "${UNTIL_MISS:-0}" = 1 ] && ! held "$dir/summary.csv" 7; then break; fi
done
kill -TERM $triton; wait $triton
cp /tmp/triton.log "$OUT/triton-$TAG.log"
