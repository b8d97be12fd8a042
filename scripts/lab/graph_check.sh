#!/usr/bin/env bash
# graph_check.py without MPS and under MPS at 45%, shared and own pools.
cd "$(dirname "$0")/../.."
python3 scripts/export-example-models.py --resnet50 /tmp/gc > /dev/null
m=/tmp/gc/resnet50_file/model.pt
echo "no MPS:"; python3 scripts/lab/graph_check.py $m
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-gc CUDA_MPS_LOG_DIRECTORY=/tmp/mps-gc-log
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
nvidia-cuda-mps-control -d
for pct in 45 100; do
  echo "MPS $pct%:"
  for variant in "" --fp32 --no-cudnn; do
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$pct python3 scripts/lab/graph_check.py $m $variant
  done
done
echo quit | nvidia-cuda-mps-control
