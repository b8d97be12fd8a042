#!/usr/bin/env python3
"""Diagnoses wrong outputs of CUDA-graph replays: captures a TorchScript model's graph per batch
size as the worker does (one shared memory pool, or one pool each with --own-pools), replays each
on random inputs and prints the largest difference from an eager run. Usage:
graph_check.py MODEL.pt [--own-pools] [--fp32]"""
import argparse, torch

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--own-pools", action="store_true")
p.add_argument("--fp32", action="store_true")
p.add_argument("--no-cudnn", action="store_true")
a = p.parse_args()
torch.backends.cudnn.enabled = not a.no_cudnn
model = torch.jit.load(a.model, map_location="cuda").eval()
dtype = torch.float32 if a.fp32 else torch.float16
model = model.to(dtype)
batches = [1, 2, 4, 6, 8, 12, 16, 24, 32]
static_in = torch.zeros(32, 3, 224, 224, device="cuda", dtype=dtype)
stream = torch.cuda.Stream()
pool = torch.cuda.graph_pool_handle()
graphs, outs = {}, {}
with torch.inference_mode():
    for b in batches:
        x = static_in[:b]
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            for _ in range(3):
                model(x)
        stream.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=None if a.own_pools else pool, stream=stream):
            outs[b] = model(x).float()
        stream.synchronize()
        graphs[b] = g
    torch.manual_seed(1)
    report = []
    for b in batches + batches[::-1]:
        data = torch.randn(b, 3, 224, 224, device="cuda").to(dtype)
        with torch.cuda.stream(stream):
            static_in[:b].copy_(data)
            graphs[b].replay()
            got = outs[b].clone()
        stream.synchronize()
        want = model(data).float()
        report.append(f"b{b}:{(got - want).abs().max().item():.3g}")
print(("own pools " if a.own_pools else "shared pool ") + ("fp32 " if a.fp32 else "") + ("no cuDNN " if a.no_cudnn else "")
      + " ".join(report))
