#!/usr/bin/env bash
# On an nvidia-h200-x2 (device tool, carry ["out"]): issue 22's live run, not run yet (the kind
# was not lent). gpu-trio served by `gpuslice serve` on one GPU, then on two with every model a
# replica on both (`gpus = [0, 1]` per model: each request goes to the replica with the fewest in
# flight), each driven through the inference protocol by `gpuslice kserve-run` at the given loads,
# in ascending order up to the first miss. Loads are per node: x2.2 on two GPUs is twice the
# one-GPU x1.1. Summaries under $OUT/gpusN-xLOAD/, one line per model and run in
# $OUT/capacity.csv.
#
#   bash scripts/gpu-two-gpus.sh "1.0 1.1 1.2" "2.0 2.2 2.4"
# FAKE_MS=2 runs it on GPU-less workers (2 ms a batch), to try the script anywhere.
# ROUTING=in-turn deals each model's requests over its replicas round-robin instead
# ([controller] replica_routing; the simulator found it holds more load under model-based:
# bench/results/2026-12-03-sim-multi-gpu-moves/), e.g. with OUT=gpu-results-in-turn.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/held.sh
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
SCENARIO=scenarios/gpu-trio.toml
[ -f "$OUT/capacity.csv" ] || echo "gpus,load_scale,model,slo_ms,arrivals,answered,failed,within_slo,slo_attainment,p50_ms,p99_ms" > "$OUT/capacity.csv"
# NODE_GPUS ("0" or "0, 1") LOADS: one node, its loads up to the first miss.
node() {
  local gpus=$1 loads=$2 n conf log server
  n=$(echo "$gpus" | tr -cd ',' | wc -c); n=$((n + 1))
  conf=$(mktemp --suffix .toml) log=$OUT/serve-gpus$n.log
  printf 'backend = "gpu"\nlisten = "127.0.0.1:50071"\ngpus = [%s]\n' "$gpus" > "$conf"
  # The scenario's models and SLOs (read from it), batches up to the backend's largest CUDA graph.
  python3 - "$SCENARIO" "$gpus" >> "$conf" <<'PY'
import sys, tomllib
for m in tomllib.load(open(sys.argv[1], "rb"))["models"]:
    print(f'[[models]]\nname = "{m["name"]}"\nslo_ms = {m["slo_ms"]}\nmax_batch = 32\n'
          f'profile = "builtin:h200-grid"\ngpus = [{sys.argv[2]}]')
PY
  [ -n "${ROUTING:-}" ] && printf '[controller]\nreplica_routing = "%s"\n' "$ROUTING" >> "$conf"
  ./out/gpuslice --log info serve --config "$conf" ${FAKE_MS:+--fake-ms $FAKE_MS} > "$log" 2>&1 &
  server=$!
  until grep -q "serving gpuslice.v1" "$log"; do
    sleep 1
    kill -0 $server 2>/dev/null || { echo "serve on GPUs [$gpus] did not start:"; tail -20 "$log"; return 1; }
  done
  for x in $loads; do
    dir=$OUT/gpus$n-x$x
    ./out/gpuslice --log warn kserve-run --target 127.0.0.1:50071 --config "$SCENARIO" --load-scale "$x" --out "$dir"
    tail -n +2 "$dir/summary.csv" | sed "s/^/$n,$x,/" >> "$OUT/capacity.csv"
    held "$dir/summary.csv" 7 || break
  done
  kill -TERM $server; wait $server
}
node "0" "${1:-1.0 1.1 1.2}"
node "0, 1" "${2:-2.0 2.2 2.4}"
