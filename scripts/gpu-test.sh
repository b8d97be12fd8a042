#!/usr/bin/env bash
# On the GPU machine: builds nothing; runs the carried GPU tests and benchmarks (from
# scripts/build-gpu-bundle.sh) and writes results under $OUT (default ./gpu-results).
# Through the device tool: run with carry ["out"] and command `bash scripts/gpu-test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
# 2 MiB hugepages for the packet pool, where the machine lets us reserve them.
echo 64 > /proc/sys/vm/nr_hugepages 2>/dev/null || echo "no hugepages: the packet pool uses ordinary pages"
status=0
for test in out/gpu-tests/*; do
  echo "== $test" | tee -a "$OUT/tests.txt"
  "$test" --nocapture 2>&1 | tee -a "$OUT/tests.txt" || status=1
done
./out/gpuslice netml-bench --out "$OUT" | tee "$OUT/netml.txt"
./out/gpuslice --log warn netml-e2e --out "$OUT" | tee "$OUT/netml-e2e.txt" || status=1
# The co-location experiment takes about six minutes: COLOCATION=1 to run it.
if [ "${COLOCATION:-0}" = 1 ]; then
  python3 scripts/colocation.py "$OUT" > "$OUT/colocation.txt" 2>&1 || status=1
fi
exit $status
