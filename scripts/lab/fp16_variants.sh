#!/usr/bin/env bash
# On the GPU machine, as root: fp16_variants.py's reference without MPS, then every variant under
# MPS at 45% and 60%. Results into ${OUT:-out}/fp16-variants/.
set -uo pipefail
cd "$(dirname "$0")/../.."
dir=${OUT:-out}/fp16-variants; mkdir -p "$dir"
ref=/tmp/fp16-variants-ref.pt
python3 scripts/lab/fp16_variants.py reference $ref 2> "$dir/reference.err"
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-fp16v CUDA_MPS_LOG_DIRECTORY=/tmp/mps-fp16v-log
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
nvidia-cuda-mps-control -d
for pct in 45 60; do
  for variant in default no-cudnn cudnn-v7 benchmark channels-last bf16; do
    extra=""; [ $variant = cudnn-v7 ] && extra="TORCH_CUDNN_V8_API_DISABLED=1"
    env $extra CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$pct python3 scripts/lab/fp16_variants.py check $ref $variant "mps-$pct" \
      >> "$dir/checks.jsonl" 2>> "$dir/checks.err"
  done
done
echo quit | nvidia-cuda-mps-control
python3 - "$dir/checks.jsonl" <<'PY' | tee "$dir/summary.txt"
import collections, json, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[r["label"], r["variant"], r["model"]].append(r)
for (label, variant, model), rs in sorted(rows.items()):
    wrong = [r["batch"] for r in rs if r["wrong"] or r["nan"]]
    worst = max(r["max_abs_diff"] / max(r["scale"], 1e-9) for r in rs)
    print(f"{label} {variant:14s} {model:20s} worst diff/scale {worst:9.3g} wrong batches {wrong}")
PY
