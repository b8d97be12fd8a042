#!/usr/bin/env bash
# On the build machine: what scripts/triton-peer.sh needs on the GPU machine, into .trt/ and
# .trt-bin/ (ignored by git): the tritonserver binary, its libraries and the Python backend from
# the nvidia-pytriton wheel, without the parts this GPU machine does not use (the Python 3.13
# runtime and the stubs for other Pythons), packed with xz and split into parts of 20 MiB in
# .trt/; gpuslice, xz-packed, into .trt-bin/. With the repository's own 37 MiB the package does
# not fit one device call: one call carries [".trt/trt.tar.xz.part-aa"] (and runs anything), the
# next, on the still-warm machine where ignored paths stay, [".trt/trt.tar.xz.part-ab",
# ".trt-bin"] and runs scripts/triton-peer.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_35_x86_64 -d "$work" nvidia-pytriton==0.7.0
mkdir -p "$work/trt" && (cd "$work/trt" && unzip -q ../nvidia_pytriton-*.whl 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*')
rm -f "$work"/trt/nvidia_pytriton.libs/libpython3-*.so*
find "$work/trt/pytriton/tritonserver/python_backend_stubs" -mindepth 1 -maxdepth 1 ! -name 3.12 -exec rm -rf {} +
mkdir -p .trt .trt-bin
rm -f .trt/trt.tar.xz*
tar cJf - -C "$work" trt | split -b 20M - .trt/trt.tar.xz.part-
strip -o "$work/gpuslice" target/release/gpuslice && xz -9 -c "$work/gpuslice" > .trt-bin/gpuslice.xz
rm -rf "$work"
ls -la .trt .trt-bin
