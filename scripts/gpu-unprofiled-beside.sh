#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): issue 16, a model no shipped profile knows is
# measured at registration and then reallocated by the model-based policy beside others.
# One repository: resnet18_file (ResNet-18 traced to TorchScript, no profile_model: measured at
# registration), densenet121 and vgg16 (torchvision, fp16, profiled); `serve --backend gpu`,
# model-based on pool levels 10-100%; `kserve-run` sends densenet121 600/s and vgg16 800/s
# throughout and resnet18_file 300/s stepping to 1500/s at 10 s, for 20 s (full FP32 inputs).
# Writes $OUT/beside.txt (registration, the run's table, every reallocation per model) and the
# serve log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
log="$OUT/beside.txt"
repo=/tmp/beside
rm -rf $repo && mkdir -p $repo
python3 scripts/export-example-models.py --unprofiled $repo > /dev/null || exit 1
for m in densenet121:30 vgg16:25; do
  mkdir -p "$repo/${m%%:*}"
  sed -e "s/torchvision:resnet50/torchvision:${m%%:*}/" -e "s/^slo_ms = 25/slo_ms = ${m##*:}\nfp16 = true/" \
    examples/models/resnet50/config.toml > "$repo/${m%%:*}/config.toml"
done
cat > /tmp/beside.toml <<'TOML'
name = "resnet18_file (measured at registration) beside densenet121 and vgg16"
seed = 1
duration_s = 20
control_interval_s = 0.25
sharing = "spatial"
[[models]]
name = "resnet18_file"
profile_model = "resnet50"
slo_ms = 25
gpu_pct = 30
max_batch = 32
batch_timeout_ms = 2
arrivals = { kind = "steps", steps = [[0, 300], [10, 1500]] }
[[models]]
name = "densenet121"
slo_ms = 30
gpu_pct = 30
max_batch = 32
batch_timeout_ms = 2
arrivals = { kind = "poisson", rate = 600 }
[[models]]
name = "vgg16"
slo_ms = 25
gpu_pct = 30
max_batch = 32
batch_timeout_ms = 2
arrivals = { kind = "poisson", rate = 800 }
TOML
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
started=$(date +%s.%N)
./out/gpuslice --log info,gpuslice_serve::live=debug serve --backend gpu --model-repository $repo \
  --listen 127.0.0.1:50051 > /tmp/beside.out 2> "$OUT/serve.log" &
server=$!
until grep -q "^serving" /tmp/beside.out; do sleep 0.5; kill -0 $server || { tail "$OUT/serve.log"; exit 1; }; done
echo "serving $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s after start" | tee -a "$log"
grep -E "measured|model registered" "$OUT/serve.log" | cut -c1-300 | tee -a "$log"
before=$(grep -c "reallocation model=" "$OUT/serve.log")
./out/gpuslice --log warn kserve-run --target 127.0.0.1:50051 --config /tmp/beside.toml 2>&1 | tee -a "$log"
for m in resnet18_file densenet121 vgg16; do
  echo "$m: $(tail -n +1 "$OUT/serve.log" | grep "reallocation model=$m " | wc -l) reallocations in all ($before of every model before the load)" | tee -a "$log"
done
grep "reallocation model=resnet18_file " "$OUT/serve.log" | sed -E 's/.*(gpu_pct=[0-9.]+ max_batch=[0-9]+).*/\1/' | uniq -c | tee -a "$log"
kill -TERM $server; wait $server
