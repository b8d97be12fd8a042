#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): the GPU measurements of the backend, NetML and
# calibration issues that follow the profile grid, into $OUT. Each step goes on if one fails.
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
echo 64 > /proc/sys/vm/nr_hugepages 2>/dev/null
sysctl -qw net.core.rmem_max=268435456 2>/dev/null
G=./out/gpuslice
step() { echo "== $*" | tee -a "$OUT/log.txt"; "$@" 2>&1 | grep -v '^\s*$' | tail -40 | tee -a "$OUT/log.txt"; }
# NetML end to end (issue 7).
step $G --log warn netml-e2e --out "$OUT"
# The trio under load on the GPU backend: model-based vs temporal vs default MPS (issue 6).
POOL=20,25,30,35,40,50,60
for policy in model-based temporal default-mps; do
  step $G --log warn gpu-run --config scenarios/gpu-trio.toml --policy $policy --pool-levels $POOL --out "$OUT/trio-$policy"
done
# Closed loop at the model-based allocation, and temporal at the same and at batch 8.
step $G gpu-probe --models densenet121:27:12,resnext50_32x4d:41:16,vgg16:32:12 --seconds 8 --label model-based --out "$OUT"
step $G gpu-probe --models densenet121:100:12,resnext50_32x4d:100:16,vgg16:100:12 --no-mps --seconds 8 --label temporal-same-batches --out "$OUT"
step $G gpu-probe --models densenet121:100,resnext50_32x4d:100,vgg16:100 --no-mps --seconds 8 --label temporal-batch8 --out "$OUT"
# Is a slice faster when other MPS clients exist? resnet50 at 100% and 80%, alone and together.
step $G --log warn profile --models resnet50 --gpu-pcts 100 --batches 1,8 --out "$OUT/alone-100.csv"
step $G --log warn profile --models resnet50 --gpu-pcts 80 --batches 1,8 --out "$OUT/alone-80.csv"
step $G --log warn profile --models resnet50 --gpu-pcts 100,80,50 --batches 1,8 --out "$OUT/together.csv"
