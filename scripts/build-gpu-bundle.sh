#!/usr/bin/env bash
# On the build machine: builds what the GPU machine runs (it has no Rust toolchain) into out/:
# the stripped gpuslice binary and the test binaries that exercise the GPU. Carry `out` with the
# device tool, then run scripts/gpu-test.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out/gpu-tests
cargo build --release -p gpuslice
strip -o out/gpuslice target/release/gpuslice
cargo test -p gpuslice-netml --test netml_loopback -p gpuslice-gpu --test worker --no-run --message-format=json \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' \
  | while read -r test; do strip -o "out/gpu-tests/$(basename "$test")" "$test"; done
ls -la out out/gpu-tests
