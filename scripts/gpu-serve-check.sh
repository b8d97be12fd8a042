#!/usr/bin/env bash
# On the GPU machine: gpuslice serves model files through the standard inference protocol and
# its outputs equal PyTorch's. Exports the example models (scripts/export-example-models.py),
# then with tritonclient (carried as wheels: see the device README) checks
#  - resnet50_file (TorchScript ResNet-50, seeded weights, fp32) at every default pool level, one
#    level per server start, against a direct PyTorch run of the same file on the same inputs;
#  - the example repository (tiny_mlp, resnet50 from torchvision) under the default pool,
#    with an unload while requests are queued.
# Writes $OUT/serve-check.txt and copies the exported tiny_mlp model.pt to $OUT.
# Through the device tool: carry ["out", ".whl"], command `bash scripts/gpu-serve-check.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
log="$OUT/serve-check.txt"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
rm -rf /tmp/rn && mkdir -p /tmp/rn
python3 scripts/export-example-models.py --resnet50 /tmp/rn 2>&1 | tee -a "$log"
cp examples/models/tiny_mlp/model.pt "$OUT/tiny_mlp.pt"
status=0

# serve REPOSITORY NODE_TOML: starts the server, sets $address and $server.
serve() {
  ./out/gpuslice --log warn serve --backend gpu --config "$2" --model-repository "$1" --listen 127.0.0.1:0 \
    > /tmp/serve.out 2> /tmp/serve.err &
  server=$!
  for _ in $(seq 1 240); do
    address=$(sed -n 's/^serving gpuslice.v1 on //p' /tmp/serve.out)
    [ -n "$address" ] && return 0
    kill -0 $server 2>/dev/null || break
    sleep 0.5
  done
  echo "server did not start:"; tail -20 /tmp/serve.err; cat /tmp/serve.out
  return 1
}

stop() {
  kill -TERM $server; wait $server; echo "server exit: $?"
}

for level in 10 20 30 45 60 80; do
  printf '[gpu]\npool_levels = [%s]\n' "$level" > /tmp/node.toml
  echo "== resnet50_file at ${level}%" | tee -a "$log"
  if serve /tmp/rn /tmp/node.toml; then
    python3 cli/tests/python/tritonclient_check.py "$address" resnet50_file --expect file \
      --program /tmp/rn/resnet50_file/model.pt --skip-unload 2>&1 | tee -a "$log" || status=1
    stop >> "$log"
  else
    status=1
  fi
done

echo "== example repository, default pool levels" | tee -a "$log"
printf '[gpu]\n' > /tmp/node.toml
if serve examples/models /tmp/node.toml; then
  python3 cli/tests/python/tritonclient_check.py "$address" tiny_mlp --expect file \
    --program examples/models/tiny_mlp/model.pt 2>&1 | tee -a "$log" || status=1
  stop | tee -a "$log"
else
  status=1
fi
tail -5 /tmp/serve.err >> "$log"
exit $status
