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
# 2026-12-02 (thirteenth session): the `colocate` step (default-MPS co-location at the batches
# served; worker start with cuDNN's autotuner on and off) ran at 5819b98. Then, with the H200
# calibration refitted on it, cuDNN's autotuner off and model-based weighing each model's
# configured batching too (issues 15, 17):
#   bash scripts/gpu-session.sh refit   fast start, then live capacity on both trios
# and then with model-based correcting its replays by what each mode missed on the GPU:
#   bash scripts/gpu-session.sh corrected   both policies on the mixed trio, model-based on gpu-trio
# and with the correction reworked (the replayed rates as they are, scaled and raised by the
# served excess; equal weights on both sides):
#   bash scripts/gpu-session.sh reworked    model-based on the mixed trio at x1.4 and x1.25, default
#                                           MPS at x1.4, model-based on gpu-trio at x1.1
#
# 2026-12-02 (fourteenth session): `reworked` and every baseline ran at 2658d79
# (bench/results/2026-12-02-h200-live-capacity-all-policies). Then model-based's replays pad
# batches to the CUDA graphs, and a live node starts each model on a quick-start worker:
#   bash scripts/gpu-session.sh padded    worker start (first level), then model-based on both
#                                         trios where it held and missed
#
# 2026-12-02 (fifteenth session): the same start and the held points, and ResNet-50 from a file
# under the gpu-trio-like load with request bytes against the zero-input path (issue 16):
#   bash scripts/gpu-session.sh file
# then, with HTTP/2 windows that let image requests flow, the byte path again, and the NetML
# ingress against the inference protocol (issue 21):
#   bash scripts/gpu-session.sh netml
# then with four NetML receive threads on one port, and 16 connections and 1 MiB HTTP/2 frames
# for the byte path:
#   bash scripts/gpu-session.sh receivers
# then NetML at batch 8 (static policy), the byte paths (gRPC and NetML) at x1.0, a model
# measured at registration beside two others, model-based on gpu-trio at x1.0:
#   bash scripts/gpu-session.sh batch8
#
# 2026-12-03 (sixteenth session): the batch-8 NetML run the budget cut, the byte paths with the
# packet-pool eviction and request bytes shared end to end, model-based on gpu-trio repeated:
#   bash scripts/gpu-session.sh repeat
# then the worker's GPU gather from the NetML packet pool inside `serve` (issue 21), against
# CPU-Copy and gRPC at the policy's batch and at batch 8:
#   bash scripts/gpu-session.sh gather
# and the NetML path at gpu-trio's load with the gather, and model-based on gpu-trio with its
# first trial kept off slices (issue 15):
#   bash scripts/gpu-session.sh gather-trio
# and again with slices that degrade a model left at once for the shared mode the last trial
# held the load in:
#   bash scripts/gpu-session.sh fallback
# (the trials then flipped to slices and back each second) and with slices a candidate only where
# they hold every model at its recent peak rate:
#   bash scripts/gpu-session.sh peak
#
# 2026-12-03 (eighteenth session): the session-17 trials (peak gate, 32-interval windows of up to
# 40,000 arrivals, the oldest quarter unjudged) live, with their mode-trial log:
#   bash scripts/gpu-session.sh trials
# (gpu-trio x1.1 held twice, the mixed trio x1.4 lost: a move into slices, its first interval's
# tail learned, the slices re-planned to degrade a model, and back). Then with the first interval
# after a move not learned from, and slices left only at a trial:
#   bash scripts/gpu-session.sh settled
# (the mixed trio x1.4 held once at 99.18% and lost once at 91.3%, gpu-trio x1.1 97.6%: between
# trials the slices were re-planned every quarter second and shrank one model after another).
# Then with the slices between trials kept while every settled model holds its SLO:
#   bash scripts/gpu-session.sh hold
# (all four held; two more at --gpu-device 0 then missed: gpu-trio x1.1 vgg16 96.6%, a settled
# miss re-planned into vgg16 at 20%; the mixed trio 98.99%). Then with slices that miss on the
# GPU and cannot be re-planned without degrading a model left for the last trial's shared mode:
#   bash scripts/gpu-session.sh fallback-on-miss   (each point twice, default MPS beside it, then
#                                                   gpu-trio x1.15)
# (gpu-trio x1.1 held twice, the mixed trio x1.4 once of two: 98.96%). Then with slices batched as
# requests come where the planned slices hold every trial load, and leftover GPU raising the load
# every slice holds (then even): the held points again, and light load against default MPS:
#   bash scripts/gpu-session.sh as-they-come
# (gpu-trio x1.1 held twice; the mixed trio x1.4 lost vgg16, 87.8% and 97.3%: a mobilenet burst
# re-planned vgg16 to 20% with no shared mode to fall back on). Then with such a re-plan not made:
#   bash scripts/gpu-session.sh keep-peers
# (the mixed trio x1.4 88.1%, 98.5%, 99.1%; gpu-trio x1.1 99.0%: the load-headroom leftover put
# mobilenet on 20% or 45% slices whose predicted p99 sat at the budget). Then with the leftover
# rule and the slice batching of before, the settled-miss rule kept:
#   bash scripts/gpu-session.sh reverted
# (the mixed trio x1.4 99.26%, 98.81%, 99.20%).
#
# 2026-12-03 (twentieth session): the settled-miss rule that degrades a peer only on a second
# miss in a row and the trials that forget at a load shift (fcae258, 254486c), live, with default
# MPS at the same points in the same call:
#   bash scripts/gpu-session.sh peers-live
# (every model-based run held: the mixed trio x1.4 twice and x1.35, gpu-trio x1.1; default MPS
# missed the mixed trio at x1.35 and x1.4, held gpu-trio x1.05). Then with a second slice plan in
# the trials, for latency (even slices, batches taken as requests come): the held points, and
# light load against default MPS:
#   bash scripts/gpu-session.sh latency-slices
# (the held points held; at x0.5 model-based's p50 below default MPS's on five of six models).
# Then default MPS where it stopped and model-based above where it held, at the same build:
#   bash scripts/gpu-session.sh edges
# (default MPS missed the mixed trio at x1.3 and gpu-trio at x1.1; model-based missed x1.45 and
# x1.15). Then where default MPS holds the mixed trio:
#   bash scripts/gpu-session.sh default-edge
#
# 2026-12-03 (twenty-first session, issue 18's one table): these carry the Triton package's last
# part and [".trt-bin"], after a call that carried its first (scripts/triton-pack.sh says why;
# gpuslice comes from .trt-bin/gpuslice.xz). A real Triton's dynamic batcher
# on a grid of max batch / queue delay under an MPS daemon of its own, each setting from a load it
# held before up to its first miss:
#   bash scripts/gpu-session.sh triton-grid
# then every gpuslice baseline the same way from where it held at 2658d79:
#   bash scripts/gpu-session.sh baselines-temporal     temporal and triton-like
#   bash scripts/gpu-session.sh baselines-gslice       gslice, and triton-like on the mixed
#                                                      trio above x1.1 (the first call stopped there)
# (gslice missed the mixed trio at x0.9, which it held at 2658d79), then gslice below that and
# Triton on gpu-trio at a larger batch and wait (32 / 4 ms held x1.0):
#   bash scripts/gpu-session.sh gslice-low
#
# 2026-12-03 (twenty-second session): the workers capture CUDA graphs up to batch 64, as
# Triton's best setting on gpu-trio batches. Triton 64 / 8 ms above x1.2 (where it held), then
# default MPS at Triton's setting (`gpu-run --max-batch 64 --batch-wait-ms 8`):
#   bash scripts/gpu-session.sh graphs-64
# (Triton missed x1.25, densenet121 97.4%; default MPS held x1.1, missed x1.2 at 93.7%.) Then
# model-based on gpu-trio up to its first miss, Triton 64 / 8 ms copying each batch's input to
# the GPU as gpuslice's workers do (INPUT_COPY=1; the peer's model skipped it), and model-based at
# the mixed trio's held x1.4:
#   bash scripts/gpu-session.sh model-based-64
# (model-based missed gpu-trio at x1.1, densenet121 98.7%, and the mixed trio at x1.4, mobilenet
# 91.3%: its default-MPS trials chose batches of 64 / 2 ms; Triton copying its input held x1.1 and
# missed x1.2, 98.2%.) Back to graphs up to 32: model-based at its held points and x1.15, Triton
# copying its input at x1.15 and at 32 / 8 ms, default MPS at 32 / 8 ms:
#   bash scripts/gpu-session.sh graphs-32
# (Triton copying its input held x1.2 at 32 / 8 ms, 99.03%, and x1.15 at 64 / 8 ms; model-based
# held x1.1 and the mixed trio's x1.4, missed x1.15 at 96.2%; default MPS at 32 / 8 ms held x1.1,
# missed x1.15 at 97.7%: at the same setting Triton's vgg16 p50 was 6.7 ms against 9.6, as it
# sends a batch once 8 are queued.) Then with batches sent at `min_batch` queued (Triton's
# smallest preferred size), and model-based trying 32 / 8 ms sent at 8:
#   bash scripts/gpu-session.sh min-batch
# 2026-12-03 (twenty-fourth session): the H200 levels GPU% 25 and 35 (validate's held-out 30%
# between near neighbours) and controlled groups at the batches served live (gslice's gap), then
# model-based on gpu-trio at Triton's x1.2 with the candidates of 308f890 (never run live),
# batches sent at min_batch cut to a graph's size (no padding, as Triton's preferred sizes) and
# each graph launched once at the worker's start (its upload off the first request):
#   bash scripts/gpu-session.sh levels
# then (carrying the Triton package's last part) Triton copying its input at its best gpu-trio
# setting, model-based up to its first miss, default MPS at that setting with batches cut to a
# graph's size, and gslice on the mixed trio with each graph launched at the worker's start:
#   bash scripts/gpu-session.sh triton-beside
# then model-based and default MPS (32 / 8 ms sent at 8) above where they held, and model-based
# on the mixed trio with the batches cut:
#   bash scripts/gpu-session.sh edges-cut
# and both at x1.25 again, and gslice on gpu-trio with each graph launched at the worker's start:
#   bash scripts/gpu-session.sh repeat-cut
# (gslice's first interval on the mixed trio still ended at p99 8.7-9.8 ms for mobilenet, against
# 3.0 simulated.) Then with one batch of each size through a worker's whole serving path at its
# start (copies, cast, graph), each worker's start phases logged:
#   bash scripts/gpu-session.sh warm-up
# (The cases before the twenty-first session are in this file's history.)
cd "$(dirname "$0")/.."
[ -x out/gpuslice ] || { [ -f .trt-bin/gpuslice.xz ] && mkdir -p out && xz -dc .trt-bin/gpuslice.xz > out/gpuslice && chmod +x out/gpuslice; }
OUT=${OUT:-gpu-results}
R=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$R/device.txt"
# Whether step $2 may start when a step needs about $1 s to be worth starting: the device call's
# 600 s must leave room to pack what came back. Logs the start, or why it was skipped.
starts_in_time() {
  if [ "$SECONDS" -gt $((560 - $1)) ]; then echo "skipped $2: out of time" | tee -a "$R/steps.txt"; return 1; fi
  date +%T | tee -a "$R/steps.txt"
}
# Each argument "POLICY SCENARIO SCALE..." one gpu-capacity.sh step, in order, each cut at 560 s.
capacity_steps() {
  for step in "$@"; do
    starts_in_time 90 "$step" || continue
    OUT=$R/${STEPS_DIR:-capacity} timeout $((560 - SECONDS)) bash scripts/gpu-capacity.sh $step
  done
  date +%T | tee -a "$R/steps.txt"
}
# Each argument "SCENARIO MAX_BATCH DELAY_US SCALE..." one triton-peer.sh setting, up to its first
# miss, under one MPS daemon (every Triton Python backend process a client at 100%: default MPS,
# where Triton held the most load before).
triton_steps() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-triton CUDA_MPS_LOG_DIRECTORY=/tmp/mps-triton-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY" && nvidia-cuda-mps-control -d
  for step in "$@"; do
    # Triton's start (20-50 s) comes first.
    starts_in_time 110 "$step" || continue
    UNTIL_MISS=1 OUT=$R/triton timeout $((560 - SECONDS)) bash scripts/triton-peer.sh $step
    # A step cut by its timeout leaves its server behind, holding the ports.
    pkill -f bin/tritonserver && sleep 2
  done
  echo quit | nvidia-cuda-mps-control
  date +%T | tee -a "$R/steps.txt"
}
# capacity_steps with every mode trial of model-based in each run's log (run.log).
traced_steps() {
  LOG=warn,gpuslice_policies=debug capacity_steps "$@"
}
case "${1:-graphs-64}" in
  levels)
    starts_in_time 200 levels && OUT=$R/profile bash scripts/gpu-profile-h200.sh levels
    starts_in_time 120 spatial-served && OUT=$R/profile bash scripts/gpu-profile-h200.sh spatial-served
    traced_steps "model-based scenarios/gpu-trio.toml 1.2" "model-based scenarios/gpu-trio.toml 1.2"
    ;;
  edges-cut)
    traced_steps "model-based scenarios/gpu-trio.toml 1.25"
    UNTIL_MISS=1 STEPS_DIR=capacity-32-8ms-min8 capacity_steps \
      "default-mps scenarios/gpu-trio.toml 1.3 1.35 -- --max-batch 32 --batch-wait-ms 8 --min-batch 8"
    UNTIL_MISS=1 traced_steps "model-based scenarios/mixed-slo-trio.toml 1.4 1.45 1.5" "model-based scenarios/gpu-trio.toml 1.25"
    ;;
  warm-up)
    LOG=warn,gpuslice_gpu::worker=info capacity_steps "gslice scenarios/mixed-slo-trio.toml 0.8"
    LOG=warn,gpuslice_gpu::worker=info,gpuslice_policies=debug capacity_steps "model-based scenarios/gpu-trio.toml 1.25"
    ;;
  repeat-cut)
    STEPS_DIR=capacity-32-8ms-min8 capacity_steps \
      "default-mps scenarios/gpu-trio.toml 1.25 -- --max-batch 32 --batch-wait-ms 8 --min-batch 8"
    traced_steps "model-based scenarios/gpu-trio.toml 1.25"
    UNTIL_MISS=1 capacity_steps "gslice scenarios/gpu-trio.toml 0.9 1.0 1.1"
    ;;
  triton-beside)
    INPUT_COPY=1 triton_steps "scenarios/gpu-trio.toml 32 8000 1.2 1.25"
    UNTIL_MISS=1 traced_steps "model-based scenarios/gpu-trio.toml 1.2 1.25"
    UNTIL_MISS=1 STEPS_DIR=capacity-32-8ms-min8 capacity_steps \
      "default-mps scenarios/gpu-trio.toml 1.2 1.25 -- --max-batch 32 --batch-wait-ms 8 --min-batch 8"
    UNTIL_MISS=1 capacity_steps "gslice scenarios/mixed-slo-trio.toml 0.8 0.9 1.0"
    ;;
  graphs-64)
    triton_steps "scenarios/gpu-trio.toml 64 8000 1.25 1.3 1.4"
    UNTIL_MISS=1 STEPS_DIR=capacity-64-8ms capacity_steps "default-mps scenarios/gpu-trio.toml 1.1 1.2 1.3 -- --max-batch 64 --batch-wait-ms 8"
    ;;
  model-based-64)
    UNTIL_MISS=1 traced_steps "model-based scenarios/gpu-trio.toml 1.1 1.15 1.2 1.25 1.3"
    INPUT_COPY=1 triton_steps "scenarios/gpu-trio.toml 64 8000 1.1 1.2"
    traced_steps "model-based scenarios/mixed-slo-trio.toml 1.4"
    ;;
  min-batch)
    traced_steps "model-based scenarios/gpu-trio.toml 1.15" "model-based scenarios/gpu-trio.toml 1.2"
    UNTIL_MISS=1 STEPS_DIR=capacity-32-8ms-min8 capacity_steps \
      "default-mps scenarios/gpu-trio.toml 1.15 1.2 1.25 -- --max-batch 32 --batch-wait-ms 8 --min-batch 8"
    traced_steps "model-based scenarios/mixed-slo-trio.toml 1.4"
    ;;
  graphs-32)
    traced_steps "model-based scenarios/mixed-slo-trio.toml 1.4" "model-based scenarios/gpu-trio.toml 1.1" \
      "model-based scenarios/gpu-trio.toml 1.15"
    INPUT_COPY=1 triton_steps "scenarios/gpu-trio.toml 64 8000 1.15" "scenarios/gpu-trio.toml 32 8000 1.1 1.15 1.2"
    UNTIL_MISS=1 STEPS_DIR=capacity-32-8ms capacity_steps "default-mps scenarios/gpu-trio.toml 1.1 1.15 1.2 -- --max-batch 32 --batch-wait-ms 8"
    ;;
  triton-grid)
    triton_steps "scenarios/gpu-trio.toml 32 4000 0.8 0.9 1.0 1.1" "scenarios/gpu-trio.toml 16 500 0.8 0.9 1.0 1.1" \
      "scenarios/mixed-slo-trio.toml 8 100 0.5 0.6 0.7 0.8" "scenarios/mixed-slo-trio.toml 4 50 0.5 0.6 0.7 0.8" \
      "scenarios/mixed-slo-trio.toml 16 200 0.5 0.6 0.7 0.8"
    ;;
  baselines-temporal)
    UNTIL_MISS=1 capacity_steps "temporal scenarios/gpu-trio.toml 0.8 0.9 1.0" "temporal scenarios/mixed-slo-trio.toml 0.5 0.6 0.7" \
      "triton-like scenarios/gpu-trio.toml 1.0 1.1 1.2" "triton-like scenarios/mixed-slo-trio.toml 1.1 1.2 1.3"
    ;;
  gslice-low)
    UNTIL_MISS=1 capacity_steps "gslice scenarios/mixed-slo-trio.toml 0.5 0.7 0.8"
    triton_steps "scenarios/gpu-trio.toml 64 8000 1.0 1.1"
    ;;
  baselines-gslice)
    UNTIL_MISS=1 capacity_steps "gslice scenarios/gpu-trio.toml 0.8 0.9 1.0 1.1" "gslice scenarios/mixed-slo-trio.toml 0.9 1.0 1.1 1.2" \
      "triton-like scenarios/mixed-slo-trio.toml 1.2 1.3"
    ;;
esac
mkdir -p "$OUT"
tar czf "$OUT/session.tgz" -C "$R" .
