#!/usr/bin/env python3
"""Where does a CUDA graph capture's time go? (issue 17: mobilenet_v3_large's worker captures took
1.4-2.5 s a batch size on the H200 with cuDNN's autotuner off)

For each variant, in a fresh process: builds the torchvision model (random weights, fp16, on the
GPU) and, per batch size, times each of the worker's steps (3 eager warm-up runs one by one, the
shape check, the capture), then the graph's replay p50. Variants: cudnn (as the worker runs),
no-cudnn (torch.backends.cudnn.enabled = False: PyTorch's own convolution kernels).
One JSON line per (variant, batch).

Usage: capture_cost.py OUT.jsonl [--model mobilenet_v3_large] [--batches 1,2,4,6,8,12,16,24,32]
"""
import argparse, json, subprocess, sys, time

from cudnn_choice import replay_ms  # this folder's: the same replay timing


def measure(model_name, variant, batches):
    import torch, torchvision
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.enabled = variant != "no-cudnn"
    t = time.monotonic()
    with torch.device("cuda"):
        model = getattr(torchvision.models, model_name)(weights=None).eval().half()
    torch.cuda.synchronize()
    rows = [{"variant": variant, "model": model_name, "build_s": round(time.monotonic() - t, 3)}]
    pool = torch.cuda.graph_pool_handle()
    stream = torch.cuda.Stream()
    with torch.inference_mode():
        for b in batches:
            x = torch.zeros(b, 3, 224, 224, device="cuda", dtype=torch.half)
            steps = []
            torch.cuda.synchronize()
            for _ in range(4):
                t = time.monotonic()
                with torch.cuda.stream(stream):
                    model(x)
                stream.synchronize()
                steps.append(round(time.monotonic() - t, 4))
            t = time.monotonic()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                model(x)
            stream.synchronize()
            capture = round(time.monotonic() - t, 4)
            times = replay_ms(torch, graph, 100)
            rows.append({"variant": variant, "model": model_name, "batch": b, "eager_s": steps, "capture_s": capture,
                         "p50_ms": round(times[50], 4)})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--model", default="mobilenet_v3_large")
    p.add_argument("--batches", default="1,2,4,6,8,12,16,24,32")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.variant:
        for row in measure(a.model, a.variant, batches):
            print(json.dumps(row), flush=True)
        return
    with open(a.out, "w") as out:
        for variant in ["cudnn", "no-cudnn"]:
            r = subprocess.run([sys.executable, __file__, a.out, "--model", a.model, "--batches", a.batches,
                                "--variant", variant], capture_output=True, text=True, timeout=150)
            out.write(r.stdout)
            sys.stdout.write(r.stdout + r.stderr[-2000:])


if __name__ == "__main__":
    main()
