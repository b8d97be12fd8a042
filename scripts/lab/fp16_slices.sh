#!/usr/bin/env bash
# On the GPU machine, as root: fp16_slices.py's references without MPS, then its checks under MPS
# at 100/60/45/30/20%, then how many MPS clients the GPU takes (mps_clients.py). Results into
# ${OUT:-out}/fp16-slices/.
set -uo pipefail
cd "$(dirname "$0")/../.."
dir=${OUT:-out}/fp16-slices; mkdir -p "$dir"
ref=/tmp/fp16-ref
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$dir/device.txt"
python3 -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.backends.cudnn.version())' >> "$dir/device.txt"
python3 scripts/lab/fp16_slices.py reference $ref > "$dir/reference.jsonl" 2> "$dir/reference.err"
python3 scripts/lab/fp16_slices.py check $ref no-mps > "$dir/check-no-mps.jsonl" 2> "$dir/check-no-mps.err"
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-fp16 CUDA_MPS_LOG_DIRECTORY=/tmp/mps-fp16-log
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
nvidia-cuda-mps-control -d
for pct in ${PCTS:-100 60 45 30 20}; do
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$pct python3 scripts/lab/fp16_slices.py check $ref "mps-$pct" \
    > "$dir/check-mps-$pct.jsonl" 2> "$dir/check-mps-$pct.err"
done
timeout 240 python3 scripts/lab/mps_clients.py ${CLIENTS:-80} > "$dir/mps-clients.json" 2> "$dir/mps-clients.err"
echo quit | nvidia-cuda-mps-control
cp $CUDA_MPS_LOG_DIRECTORY/control.log "$dir/mps-control.log" 2>/dev/null
# The summary: per label and path, the worst difference relative to the scale, and NaNs.
python3 - "$dir" <<'PY' | tee "$dir/summary.txt"
import collections, glob, json, sys
rows = collections.defaultdict(lambda: [0.0, 0, []])
for f in sorted(glob.glob(sys.argv[1] + "/check-*.jsonl")):
    for line in open(f):
        r = json.loads(line)
        if "batch" not in r:
            print("first wrong layer:", r); continue
        k = (r["label"], r["model"], r["path"])
        rows[k][0] = max(rows[k][0], r["max_abs_diff"] / max(r["scale"], 1e-9))
        rows[k][1] += r["nan"]
        if r["max_abs_diff"] > 0.05 * r["scale"] or r["nan"]:
            rows[k][2].append(r["batch"])
for (label, model, path), (rel, nan, bad) in sorted(rows.items()):
    print(f"{label:8s} {model:20s} {path:22s} worst diff/scale {rel:9.3g} nan {nan:6d} wrong batches {bad}")
PY
cat "$dir/mps-clients.json"
