#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): this session's GPU measurements into $OUT,
# packed into $OUT/session.tgz (the device tool returns a limited number of files). Each step goes
# on if one fails. The earlier sessions' steps are in this file's git history.
#
# 2026-12-01 (seventh session): after the crate split, the GPU tests (workers, MPS, the GPU
# backend's serving and reallocation; the NetML loopback), then live capacity on gpu-trio for
# model-based and default-mps around the loads the H200 held before (x1.1 and x1.2).
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
R=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$R/device.txt"
for test in out/gpu-tests/*; do
  echo "== $test" | tee -a "$R/tests.txt"
  timeout 240 "$test" --test-threads 1 2>&1 | tail -30 | tee -a "$R/tests.txt"
done
OUT=$R/capacity timeout 200 bash scripts/gpu-capacity.sh model-based scenarios/gpu-trio.toml 1.1 1.2 1.3
OUT=$R/capacity timeout 140 bash scripts/gpu-capacity.sh default-mps scenarios/gpu-trio.toml 1.2 1.3
mkdir -p "$OUT"
tar czf "$OUT/session.tgz" -C "$R" .
