#!/usr/bin/env python3
"""Is cuDNN's autotuner worth its start-up time? (issue 17, fast start)

For each model, in a fresh process with torch.backends.cudnn.benchmark on and then off: builds the
torchvision model (random weights, fp16, on the GPU), captures one CUDA graph per batch size as the
GPU worker does (3 warm-up runs, then the capture), and times each capture and then the graph's
replays (median and p99 of --replays, between CUDA events). One CSV row per (model, benchmark,
batch): capture_s, p50_ms, p99_ms.

Usage: cudnn_choice.py OUT.csv [--models a,b] [--batches 1,8,16,32] [--replays 200]
"""
import argparse, csv, json, subprocess, sys, time


def replay_ms(torch, graph, replays):
    """The graph's replay times (ms between two CUDA events), sorted, after 20 warm-up replays."""
    for _ in range(20):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)


def measure(model_name, benchmark, batches, replays):
    import torch, torchvision
    torch.backends.cudnn.benchmark = benchmark
    with torch.device("cuda"):
        model = getattr(torchvision.models, model_name)(weights=None).eval().half()
    rows = []
    pool = torch.cuda.graph_pool_handle()
    stream = torch.cuda.Stream()
    with torch.inference_mode():
        for b in sorted(batches, reverse=True):
            x = torch.zeros(b, 3, 224, 224, device="cuda", dtype=torch.half)
            began = time.monotonic()
            torch.cuda.synchronize()
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(x)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                model(x)
            stream.synchronize()
            capture_s = time.monotonic() - began
            times = replay_ms(torch, graph, replays)
            rows.append({"model": model_name, "benchmark": benchmark, "batch": b, "capture_s": round(capture_s, 3),
                         "p50_ms": round(times[len(times) // 2], 4), "p99_ms": round(times[int(len(times) * 0.99)], 4)})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--models", default="mobilenet_v3_large,densenet121,resnet50,resnext50_32x4d,vgg16")
    p.add_argument("--batches", default="1,8,16,32")
    p.add_argument("--replays", type=int, default=200)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        name, benchmark = args.child.split(":")
        print(json.dumps(measure(name, benchmark == "on", batches, args.replays)))
        return
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "benchmark", "batch", "capture_s", "p50_ms", "p99_ms"])
        w.writeheader()
        for name in args.models.split(","):
            for benchmark in ("on", "off"):
                got = subprocess.run([sys.executable, __file__, args.out, "--batches", args.batches, "--replays",
                                      str(args.replays), "--child", f"{name}:{benchmark}"], capture_output=True, text=True)
                if got.returncode != 0:
                    print(f"{name} benchmark {benchmark} failed: {got.stderr[-2000:]}", file=sys.stderr)
                    continue
                for row in json.loads(got.stdout.strip().splitlines()[-1]):
                    w.writerow(row)
                    f.flush()
                    print(row, flush=True)


if __name__ == "__main__":
    main()
