#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): the H200 calibration's measurements into $OUT,
# in two parts so each fits one device call (each part ~6-7 minutes):
#   bash scripts/gpu-profile-h200.sh trio     the four models of the live scenarios (grid.csv part 1)
#   bash scripts/gpu-profile-h200.sh rest     the other three models and the co-location groups
# Not run yet (issue 18; session 23's note says why):
#   bash scripts/gpu-profile-h200.sh levels   GPU% 25 and 35 for all seven models, so that a held-out
#                                             30% sits between near neighbours (vgg16's steps)
#   bash scripts/gpu-profile-h200.sh spatial-served   controlled (GPU%) groups at the batches gslice
#                                             and model-based serve live, where the batch-8 groups
#                                             under-predict a light model beside heavy batches
# GPU% levels: the H100 grid's 100..10 plus 45, a level the server's default pool uses.
# The co-location groups are the H100 calibration's (profiles/h100/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
LEVELS=100,80,60,50,45,40,30,20,10
COLOCATION_GROUPS='densenet121:50+vgg16:50,densenet121:40+resnext50_32x4d:60,resnext50_32x4d:50+vgg16:50,resnet50:50+mobilenet_v3_large:50,efficientnet_b0:40+vit_b_16:60,resnet50:30+vgg16:70,densenet121:100+vgg16:100,resnext50_32x4d:100+vgg16:100,densenet121:100+resnext50_32x4d:100,resnet50:100+mobilenet_v3_large:100,efficientnet_b0:100+vit_b_16:100,densenet121:25+resnext50_32x4d:35+vgg16:40,densenet121:100+resnext50_32x4d:100+vgg16:100,resnet50:30+efficientnet_b0:30+vit_b_16:40,resnet50:100+efficientnet_b0:100+vit_b_16:100'
# The live trios' slices at their served batches (the largest CUDA graph is 32).
SPATIAL_SERVED_GROUPS='mobilenet_v3_large:30:8+densenet121:30:32+vgg16:30:32,mobilenet_v3_large:30:16+densenet121:30:16+vgg16:30:16,mobilenet_v3_large:60:16+densenet121:20:32+vgg16:20:32,mobilenet_v3_large:45:8+vgg16:45:32,mobilenet_v3_large:45:8+densenet121:45:32,densenet121:30:32+resnext50_32x4d:30:32+vgg16:30:32,densenet121:30:16+resnext50_32x4d:30:16+vgg16:30:16,densenet121:20:32+resnext50_32x4d:45:32+vgg16:30:32'
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device-$1.txt"
case "$1" in
  trio)
    ./out/gpuslice profile --models densenet121,resnext50_32x4d,vgg16,mobilenet_v3_large \
      --gpu-pcts "$LEVELS" --out "$OUT/grid-trio.csv" 2>&1 | tail -3 | tee "$OUT/log-trio.txt"
    ;;
  rest)
    ./out/gpuslice profile --models resnet50,efficientnet_b0,vit_b_16 --gpu-pcts "$LEVELS" \
      --out "$OUT/grid-rest.csv" --colocate "$COLOCATION_GROUPS" --colocation-out "$OUT/colocation.csv" \
      2>&1 | tail -3 | tee "$OUT/log-rest.txt"
    ;;
  levels)
    ./out/gpuslice profile --models densenet121,resnext50_32x4d,vgg16,mobilenet_v3_large,resnet50,efficientnet_b0,vit_b_16 \
      --gpu-pcts 35,25 --out "$OUT/grid-levels.csv" 2>&1 | tail -3 | tee "$OUT/log-levels.txt"
    ;;
  spatial-served)
    ./out/gpuslice profile --models '' --colocate "$SPATIAL_SERVED_GROUPS" \
      --colocation-out "$OUT/colocation-spatial-served.csv" 2>&1 | tail -3 | tee "$OUT/log-spatial-served.txt"
    ;;
esac
