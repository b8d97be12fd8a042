#!/usr/bin/env bash
# On the build machine: what scripts/triton-peer.sh needs on the GPU machine, into .trt/ and
# .trt-bin/ (ignored by git): the tritonserver binary, its libraries and the Python backend from
# the nvidia-pytriton wheel, without the parts this GPU machine does not use (the Python 3.13
# runtime and the stubs for other Pythons), packed with xz into .trt/; gpuslice, xz-packed, into
# .trt-bin/. With the repository's own 37 MiB the two do not fit one device call's 64 MiB: one
# call carries [".trt"] and unpacks it (`bash scripts/triton-peer.sh unpack`), the next, on the
# still-warm machine, carries [".trt-bin"] and runs.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_35_x86_64 -d "$work" nvidia-pytriton==0.7.0
mkdir -p "$work/trt" && (cd "$work/trt" && unzip -q ../nvidia_pytriton-*.whl 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*')
rm -f "$work"/trt/nvidia_pytriton.libs/libpython3-*.so*
find "$work/trt/pytriton/tritonserver/python_backend_stubs" -mindepth 1 -maxdepth 1 ! -name 3.12 -exec rm -rf {} +
mkdir -p .trt .trt-bin
tar cJf .trt/trt.tar.xz -C "$work" trt
strip -o "$work/gpuslice" target/release/gpuslice && xz -9 -c "$work/gpuslice" > .trt-bin/gpuslice.xz
rm -rf "$work"
ls -la .trt .trt-bin
