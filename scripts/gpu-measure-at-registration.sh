#!/usr/bin/env bash
# On the GPU machine (device tool; gpuslice at out/gpuslice): a model no shipped profile knows
# (ResNet-18 from a TorchScript file, no profile_model) is measured at registration, then serves
# under the model-based policy and is reallocated as its load moves. `serve --backend gpu
# --model-repository` with only that model; `kserve-run` sends it 500 then 2000 requests/s
# (20 ms SLO), 15 s each, with full 3x224x224 FP32 inputs. Writes $OUT/measure.txt and serve.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
rm -rf /tmp/unprofiled && mkdir -p /tmp/unprofiled
python3 scripts/export-example-models.py --unprofiled /tmp/unprofiled > /dev/null || exit 1
started=$(date +%s.%N)
./out/gpuslice --log info,gpuslice_serve::live=debug serve --backend gpu --model-repository /tmp/unprofiled \
  --listen 127.0.0.1:50051 > "$OUT/serve.out" 2> "$OUT/serve.log" &
server=$!
until grep -q "^serving" "$OUT/serve.out"; do sleep 0.2; kill -0 $server || { tail "$OUT/serve.log"; exit 1; }; done
echo "serving $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s after start" | tee "$OUT/measure.txt"
grep -E "measured|model registered" "$OUT/serve.log" | tee -a "$OUT/measure.txt"
cat > /tmp/unprofiled.toml <<'TOML'
name = "resnet18_file, measured at registration"
seed = 1
duration_s = 15
control_interval_s = 0.25
sharing = "spatial"
[[models]]
name = "resnet18_file"
profile_model = "resnet50"
slo_ms = 20
gpu_pct = 30
max_batch = 32
batch_timeout_ms = 2
arrivals = { kind = "poisson", rate = 500 }
TOML
for scale in 1 4; do
  ./out/gpuslice --log warn kserve-run --target 127.0.0.1:50051 --config /tmp/unprofiled.toml --load-scale $scale 2>&1 | tee -a "$OUT/measure.txt"
  echo "allocations so far: $(grep -c 'reallocation' "$OUT/serve.log"); last: $(grep 'reallocation' "$OUT/serve.log" | tail -1 | cut -c1-220)" | tee -a "$OUT/measure.txt"
done
kill -TERM $server; wait $server
