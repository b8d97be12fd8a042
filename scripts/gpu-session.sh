#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): this session's GPU measurements into $OUT,
# packed into $OUT/session.tgz (the device tool returns a limited number of files). Each step goes
# on if one fails. The earlier sessions' steps are in this file's git history.
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
R=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$R/device.txt"
G=./out/gpuslice
step() { echo "== $*" | tee -a "$R/log.txt"; "$@" 2>&1 | grep -v '^\s*$' | tail -40 | tee -a "$R/log.txt"; }

# serve --backend gpu under the loopback load test: registration over gRPC starts the workers,
# Infer is served on the GPU, SIGINT answers every accepted request.
$G --log info serve --config configs/node-gpu.toml > "$R/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/50051) 2>/dev/null && break; sleep 0.2; done
step $G load-test --target 127.0.0.1:50051 --seconds 20 --infer-rps 3000 --control-rps 100
curl -s http://127.0.0.1:9100/metrics > "$R/serve-metrics.txt"
kill -INT $SERVE; wait $SERVE; echo "serve exited $?" | tee -a "$R/log.txt"
tail -5 "$R/serve.log" | tee -a "$R/log.txt"

# Reallocation both ways: standby pool (MPS 30%/60%) vs green contexts (40/80 SMs) in one worker.
step $G --log warn realloc-gap --model resnet50 --pcts 30,60 --green-sms 40,80 --switches 100 --out "$R"
# The trio co-located on green contexts (each under MPS at 100%), against the MPS runs of
# profiles/h100/colocation.csv.
step $G gpu-probe --models densenet121:25,resnext50_32x4d:35,vgg16:40 --green --seconds 8 --label green-controlled --out "$R"
step $G gpu-probe --models densenet121:27:12,resnext50_32x4d:41:16,vgg16:32:12 --green --seconds 8 --label green-model-based --out "$R"
# Grid order check (calibration issue): is 80% faster than 100% whichever is measured first?
step $G --log warn profile --models resnet50 --gpu-pcts 100,80 --batches 1,8 --repeats 200 --out "$R/order-100-80.csv"
step $G --log warn profile --models resnet50 --gpu-pcts 80,100 --batches 1,8 --repeats 200 --out "$R/order-80-100.csv"
tar czf "$OUT/session.tgz" -C "$R" .
cp "$R/log.txt" "$OUT/log.txt"
