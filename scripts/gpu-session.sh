#!/usr/bin/env bash
# On the GPU machine (device tool, carry ["out"]): this session's GPU measurements into $OUT,
# packed into $OUT/session.tgz (the device tool returns a limited number of files). Each step goes
# on if one fails. The earlier sessions' steps are in this file's git history.
#
# 2026-12-02 (ninth session): the GPU backend switches between slices and default MPS through a
# 100% pool level (now shipped by default), so model-based's mode trials run live. The GPU
# worker tests, then live capacity for model-based and default-mps:
#   bash scripts/gpu-session.sh trio    gpu-trio around the x1.15-x1.2 both held last time
#   bash scripts/gpu-session.sh trio-low   gpu-trio below that (neither held x1.15 in `trio`)
#   bash scripts/gpu-session.sh mixed   the mixed-SLO trio
#
# 2026-12-02 (tenth session): gpu-run plans with the calibration of the GPU it runs on
# (builtin:h200-calibration here), so model-based's mode trials predict this GPU:
#   bash scripts/gpu-session.sh h200    both trios where the H100 calibration's runs stopped
#
# 2026-12-02 (twelfth session): model-based weighs what was served like one replay (issue 15):
#   bash scripts/gpu-session.sh served  model-based where it fell below default MPS live
#
# 2026-12-02 (thirteenth session): default-MPS co-location at the batches served (issues 15, 18)
# and worker start (issue 17): random weights drawn on the GPU; cuDNN autotuner on and off:
#   bash scripts/gpu-session.sh colocate
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
R=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$R/device.txt"
case "${1:-trio}" in
  trio)
    for test in out/gpu-tests/worker-*; do
      echo "== $test" | tee -a "$R/tests.txt"
      timeout 180 "$test" --test-threads 1 2>&1 | tail -30 | tee -a "$R/tests.txt"
    done
    OUT=$R/capacity timeout 230 bash scripts/gpu-capacity.sh model-based scenarios/gpu-trio.toml 1.15 1.2 1.3
    OUT=$R/capacity timeout 150 bash scripts/gpu-capacity.sh default-mps scenarios/gpu-trio.toml 1.15 1.2
    ;;
  trio-low)
    OUT=$R/capacity timeout 250 bash scripts/gpu-capacity.sh model-based scenarios/gpu-trio.toml 1.0 1.1 1.15
    OUT=$R/capacity timeout 170 bash scripts/gpu-capacity.sh default-mps scenarios/gpu-trio.toml 1.0 1.1
    ;;
  mixed)
    OUT=$R/capacity timeout 280 bash scripts/gpu-capacity.sh model-based scenarios/mixed-slo-trio.toml 1.4 1.7 2.0
    OUT=$R/capacity timeout 280 bash scripts/gpu-capacity.sh default-mps scenarios/mixed-slo-trio.toml 1.4 1.7 2.0
    ;;
  h200)
    OUT=$R/capacity timeout 250 bash scripts/gpu-capacity.sh model-based scenarios/mixed-slo-trio.toml 1.25 1.4
    OUT=$R/capacity timeout 120 bash scripts/gpu-capacity.sh default-mps scenarios/mixed-slo-trio.toml 1.25
    OUT=$R/capacity timeout 170 bash scripts/gpu-capacity.sh model-based scenarios/gpu-trio.toml 1.15 1.2
    ;;
  served)
    python3 -c 'import sys, numpy; print(sys.version, "numpy", numpy.__version__)' 2>&1 | tee "$R/python.txt"
    for step in "model-based scenarios/mixed-slo-trio.toml 1.25" "default-mps scenarios/mixed-slo-trio.toml 1.4" \
                "model-based scenarios/gpu-trio.toml 1.2" "model-based scenarios/mixed-slo-trio.toml 1.4"; do
      date +%T | tee -a "$R/steps.txt"
      OUT=$R/capacity timeout 150 bash scripts/gpu-capacity.sh $step
    done
    date +%T | tee -a "$R/steps.txt"
    ;;
  colocate)
    for choice in on off; do
      date +%T | tee -a "$R/steps.txt"
      GPUSLICE_CUDNN_BENCHMARK=$choice OUT=$R/start timeout 100 bash scripts/gpu-start.sh "cudnn-$choice"
    done
    date +%T | tee -a "$R/steps.txt"
    timeout 150 python3 scripts/lab/cudnn_choice.py "$R/cudnn-choice.csv" \
      --models mobilenet_v3_large,densenet121,resnet50,resnext50_32x4d --replays 100 > "$R/cudnn-choice.log" 2>&1
    date +%T | tee -a "$R/steps.txt"
    groups='mobilenet_v3_large:100:8+densenet121:100:16+vgg16:100:16,mobilenet_v3_large:100:8+densenet121:100:32+vgg16:100:32'
    groups+=',mobilenet_v3_large:100:16+densenet121:100:32+vgg16:100:32,mobilenet_v3_large:100:8+densenet121:100:32'
    groups+=',mobilenet_v3_large:100:8+vgg16:100:32,mobilenet_v3_large:100:4+vgg16:100:16'
    groups+=',densenet121:100:16+resnext50_32x4d:100:16+vgg16:100:16,densenet121:100:32+resnext50_32x4d:100:32+vgg16:100:32'
    groups+=',densenet121:100:16+vgg16:100:32,resnext50_32x4d:100:32+vgg16:100:32,densenet121:100:32+resnext50_32x4d:100:16'
    groups+=',densenet121:100:8+resnext50_32x4d:100:32+vgg16:100:32,densenet121:30:16+resnext50_32x4d:30:16+vgg16:40:32'
    timeout 330 ./out/gpuslice profile --models '' --colocate "$groups" --colocate-seconds 3 \
      --colocation-out "$R/colocation-served.csv" > "$R/colocate.log" 2>&1
    date +%T | tee -a "$R/steps.txt"
    ;;
esac
mkdir -p "$OUT"
tar czf "$OUT/session.tgz" -C "$R" .
