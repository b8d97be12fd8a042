#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): supervision live (issue 17). One
# `serve --config configs/node-gpu.toml` (GPU backend, pool 20/30/45/60), `load-test` registering
# mobilenet_v3_large, resnet50 and vgg16 together and sending them 1500 Infer/s for 100 s; 15 s
# into the load the busiest resnet50 worker is killed (SIGKILL), 20 s later the MPS server.
# Writes to $OUT: timeline/ (Infer calls answered and failed per second, CSV and SVG),
# load.txt (the load test's table and registration times), ready.txt (/metrics readiness every
# 0.5 s), events.txt (when each kill came, on the load's clock), serve.log (JSON logs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
LOAD_S=${LOAD_S:-100}; RPS=${RPS:-1500}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
./out/gpuslice --log info --log-format json serve --config configs/node-gpu.toml > "$OUT/serve.out" 2> "$OUT/serve.log" &
server=$!
until grep -q "^serving" "$OUT/serve.out"; do sleep 0.5; kill -0 $server || { tail "$OUT/serve.log"; exit 1; }; done
metric() { python3 -c 'import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=2).read().decode()
print(" ".join(l for l in text.splitlines() if l.startswith(sys.argv[1])))' "$1" 2>/dev/null; }
( while kill -0 $server 2>/dev/null; do echo "$(date +%s.%N) $(metric gpuslice_model_ready)"; sleep 0.5; done ) > "$OUT/ready.txt" &
./out/gpuslice --log info load-test --target 127.0.0.1:50051 --seconds "$LOAD_S" --infer-rps "$RPS" \
  --control-rps 20 --quiet --out "$OUT/timeline" > "$OUT/load.txt" 2>&1 &
load=$!
# The load's clock starts with its first call, once the three models serve.
until metric 'gpuslice_arrivals_total{model="resnet50"}' | grep -q '} [1-9]'; do
  sleep 0.2; kill -0 $load || { cat "$OUT/load.txt"; exit 1; }
done
start=$(date +%s.%N)
event() { echo "$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s: $*" | tee -a "$OUT/events.txt"; }
event "load running"
sleep 15
# The busiest resnet50 worker (the one serving): most CPU time over one second.
workers=$(pgrep -P $server -f 'worker.*--model resnet50' || true)
cpu() { for p in $workers; do echo "$p $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0)"; done; }
before=$(cpu); sleep 1; after=$(cpu)
victim=$(join <(echo "$before" | sort) <(echo "$after" | sort) | awk '{print $3-$2, $1}' | sort -n | tail -1 | cut -d' ' -f2)
kill -KILL "$victim" && event "killed resnet50 worker $victim (of: $(echo $workers))"
sleep 20
mps=$(pgrep -f nvidia-cuda-mps-server || true)
kill -KILL $mps && event "killed the MPS server ($mps)"
wait $load
event "load done"
cat "$OUT/load.txt"
kill -TERM $server; wait $server
echo "serve exited with $?" | tee -a "$OUT/events.txt"
grep -E '"(worker lost|MPS outage|pool worker ready|model failed|health)' "$OUT/serve.log" | head -80 > "$OUT/supervision.log"
