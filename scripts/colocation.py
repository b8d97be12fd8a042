#!/usr/bin/env python3
"""Co-location experiment on the GPU machine (calibrates the simulator's sharing models).

Runs torchvision models (random weights, fp16, one CUDA graph at the given batch) closed-loop,
back to back, and records per-batch GPU latency between two CUDA events:
  - solo: each model alone under MPS at each GPU% in --solo-pcts;
  - controlled: all models together under MPS, each at its --split GPU%;
  - default-mps: all models together under MPS, all at 100%;
  - temporal: all models together without MPS (the driver time-slices their contexts).
Writes one CSV row per (mode, model): p50, p99, mean latency and images/s.

Usage: colocation.py OUT_DIR [--models a,b,c] [--split 25,35,40] [--batch 8] [--seconds 10]
"""
import argparse, csv, json, os, subprocess, sys, tempfile, time


def worker(args):
    import torch, torchvision
    torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, args.model)(weights=None).half().cuda().eval()
    x = torch.randn(args.batch, 3, 224, 224, device="cuda", dtype=torch.half)
    with torch.inference_mode():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(5):
                model(x)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    open(args.ready, "w").close()
    while not os.path.exists(args.go):
        time.sleep(0.001)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    lat = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        lat.append(start.elapsed_time(end))
    wall = time.perf_counter() - t0
    json.dump({"lat": lat, "wall": wall}, open(args.result, "w"))


def run_group(members, batch, seconds, mps_env):
    """members: [(model, gpu_pct or None)]; runs them together, returns [(model, pct, lat, wall)]."""
    tmp = tempfile.mkdtemp()
    go = os.path.join(tmp, "go")
    procs = []
    for i, (model, pct) in enumerate(members):
        env = dict(os.environ)
        if mps_env is not None:
            env.update(mps_env)
            if pct is not None:
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(pct)
        ready, result = os.path.join(tmp, f"ready{i}"), os.path.join(tmp, f"result{i}.json")
        cmd = [sys.executable, __file__, "--worker", "--model", model, "--batch", str(batch),
               "--seconds", str(seconds), "--ready", ready, "--go", go, "--result", result]
        procs.append((model, pct, ready, result, subprocess.Popen(cmd, env=env)))
    while not all(os.path.exists(p[2]) for p in procs):
        if any(p[4].poll() not in (None, 0) for p in procs):
            raise SystemExit(f"a worker died: {[(p[0], p[4].poll()) for p in procs]}")
        time.sleep(0.05)
    open(go, "w").close()
    out = []
    for model, pct, _, result, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"worker {model} failed with {proc.returncode}")
        r = json.load(open(result))
        out.append((model, pct, r["lat"], r["wall"]))
    return out


def stats(lat):
    s = sorted(lat)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]
    return q(0.5), q(0.99), sum(s) / len(s)


def start_mps(base):
    env = {"CUDA_MPS_PIPE_DIRECTORY": os.path.join(base, "pipe"), "CUDA_MPS_LOG_DIRECTORY": os.path.join(base, "log")}
    for d in env.values():
        os.makedirs(d, exist_ok=True)
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env={**os.environ, **env}, check=True)
    time.sleep(1)
    return env


def stop_mps(env):
    subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", env={**os.environ, **env})
    time.sleep(2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out", nargs="?")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--model"); p.add_argument("--ready"); p.add_argument("--go"); p.add_argument("--result")
    p.add_argument("--models", default="densenet121,resnext50_32x4d,vgg16")
    p.add_argument("--split", default="25,35,40")
    p.add_argument("--solo-pcts", default="100,25,35,40")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    models = args.models.split(",")
    split = [int(v) for v in args.split.split(",")]
    os.makedirs(args.out, exist_ok=True)
    rows = []
    def record(mode, results):
        for model, pct, lat, wall in results:
            p50, p99, mean = stats(lat)
            rows.append({"mode": mode, "model": model, "gpu_pct": pct if pct is not None else 100, "batch": args.batch,
                         "batches": len(lat), "p50_ms": round(p50, 4), "p99_ms": round(p99, 4), "mean_ms": round(mean, 4),
                         "imgs_per_s": round(len(lat) * args.batch / wall, 1)})
            print(rows[-1], flush=True)
    base = tempfile.mkdtemp(prefix="mps")
    mps = start_mps(base)
    try:
        for model in models:
            for pct in [int(v) for v in args.solo_pcts.split(",")]:
                record("solo", run_group([(model, pct)], args.batch, min(args.seconds, 4), mps))
        record("controlled", run_group(list(zip(models, split)), args.batch, args.seconds, mps))
        record("default-mps", run_group([(m, 100) for m in models], args.batch, args.seconds, mps))
    finally:
        stop_mps(mps)
    record("temporal", run_group([(m, None) for m in models], args.batch, args.seconds, None))
    with open(os.path.join(args.out, "colocation.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader(); w.writerows(rows)


if __name__ == "__main__":
    main()
