#!/usr/bin/env python3
"""Which part of a model computes wrong values under an MPS slice (issue 45): one process per
setting, every comparison against references computed without MPS.

  fp16_slices.py reference DIR            (no MPS) inputs and eager fp32 / fp16 outputs, per model
  fp16_slices.py check DIR LABEL          (under MPS at some CUDA_MPS_ACTIVE_THREAD_PERCENTAGE)
      eager fp16, eager fp32, graphs as the worker captures them (one pool, side stream), the
      worker's path (pinned host slot -> staging fp32 -> cast -> graph -> pinned host), and
      graph_check.py's old comparison (a random input made on the default stream and copied on a
      side stream with no wait: a race), each against the reference; where eager fp16 is off,
      the first layer whose output is off (forward hooks against the reference's).

Models: torchvision resnet50 and mobilenet_v3_large with weights seeded by 0 (no download).
Inputs: made on the CPU with a fixed seed, so every process sees the same bytes.
Prints one JSON line per (model, path, batch): max abs difference, NaN count, and the reference's
max abs value (the scale)."""
import json, os, sys
import torch, torchvision

MODELS = ["resnet50", "mobilenet_v3_large"]
BATCHES = [1, 2, 8, 16, 32]


def model_of(name, dtype):
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval().cuda()
    return m.to(dtype)


def inputs():
    g = torch.Generator().manual_seed(1)
    return {b: torch.randn(b, 3, 224, 224, generator=g) for b in BATCHES}


def leaf_outputs(model, x):
    """Every leaf module's output, by module name, for one eager run."""
    got, hooks = {}, []
    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: got.__setitem__(name, out.detach().float().cpu())))
    model(x)
    torch.cuda.synchronize()
    for h in hooks:
        h.remove()
    return got


def reference(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    xs = inputs()
    torch.save(xs, f"{out_dir}/inputs.pt")
    with torch.inference_mode():
        for name in MODELS:
            ref = {}
            for dtype in (torch.float32, torch.float16):
                model = model_of(name, dtype)
                ref[str(dtype)] = {b: model(x.cuda().to(dtype)).float().cpu() for b, x in xs.items()}
                ref[f"layers-{dtype}"] = leaf_outputs(model, xs[8].cuda().to(dtype))
            torch.save(ref, f"{out_dir}/{name}.pt")
    print(json.dumps({"reference": out_dir, "device": torch.cuda.get_device_name(0)}))


def report(label, name, path, b, got, want):
    diff = (got.float() - want).abs()
    print(json.dumps({"label": label, "model": name, "path": path, "batch": b,
                      "max_abs_diff": round(float(diff.nan_to_num(float("inf")).max()), 5),
                      "nan": int(torch.isnan(got).sum()), "scale": round(float(want.abs().max()), 3)}), flush=True)


def graphs_of(model, static_in, stream):
    """One CUDA graph per batch size, captured as the worker does (one pool, a side stream)."""
    pool, graphs, outs = torch.cuda.graph_pool_handle(), {}, {}
    for b in BATCHES:
        x = static_in[:b]
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            for _ in range(3):
                model(x)
        stream.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool, stream=stream):
            outs[b] = model(x).float()
        stream.synchronize()
        graphs[b] = g
    return graphs, outs


def check(out_dir, label):
    xs = torch.load(f"{out_dir}/inputs.pt")
    stream = torch.cuda.Stream()
    with torch.inference_mode():
        for name in MODELS:
            ref = torch.load(f"{out_dir}/{name}.pt")
            for dtype in (torch.float32, torch.float16):
                want = ref[str(dtype)]
                model = model_of(name, dtype)
                tag = "fp16" if dtype == torch.float16 else "fp32"
                eager_off = False
                for b, x in xs.items():
                    got = model(x.cuda().to(dtype)).float().cpu()
                    report(label, name, f"eager-{tag}", b, got, want[b])
                    eager_off |= bool((got - want[b]).abs().nan_to_num(float("inf")).max() > 0.05 * want[b].abs().max())
                if eager_off:
                    layers, want_layers = leaf_outputs(model, xs[8].cuda().to(dtype)), ref[f"layers-{dtype}"]
                    for lname, out in layers.items():
                        w = want_layers[lname]
                        d = float((out - w).abs().nan_to_num(float("inf")).max())
                        if d > 0.05 * float(w.abs().max()) + 1e-3:
                            print(json.dumps({"label": label, "model": name, "path": f"first-wrong-layer-{tag}",
                                              "layer": lname, "max_abs_diff": d, "scale": float(w.abs().max())}))
                            break
                static_in = torch.zeros(BATCHES[-1], 3, 224, 224, device="cuda", dtype=dtype)
                graphs, outs = graphs_of(model, static_in, stream)
                for b, x in xs.items():
                    static_in[:b].copy_(x.cuda().to(dtype))
                    torch.cuda.synchronize()
                    with torch.cuda.stream(stream):
                        graphs[b].replay()
                    stream.synchronize()
                    report(label, name, f"graph-{tag}", b, outs[b].cpu(), want[b])
                # The worker's path: pinned fp32 slot -> staging -> cast -> graph -> pinned out.
                host_in = torch.empty(BATCHES[-1], 3, 224, 224).pin_memory()
                host_out = torch.empty(BATCHES[-1], 1000).pin_memory()
                staging = torch.zeros(BATCHES[-1], 3, 224, 224, device="cuda")
                for b, x in xs.items():
                    host_in[:b].copy_(x)
                    with torch.cuda.stream(stream):
                        staging[:b].copy_(host_in[:b], non_blocking=True)
                        static_in[:b].copy_(staging[:b])
                        graphs[b].replay()
                        host_out[:b].copy_(outs[b], non_blocking=True)
                    stream.synchronize()
                    report(label, name, f"worker-path-{tag}", b, host_out[:b].clone(), want[b])
                # graph_check.py's comparison: the input made on the default stream, copied on the
                # side stream without waiting for it.
                for b, x in xs.items():
                    data = x.cuda().to(dtype)
                    with torch.cuda.stream(stream):
                        static_in[:b].copy_(data)
                        graphs[b].replay()
                        got = outs[b].clone()
                    stream.synchronize()
                    report(label, name, f"unsynced-input-{tag}", b, got.cpu(), want[b])
                del graphs, outs
                torch.cuda.empty_cache()


if __name__ == "__main__":
    if sys.argv[1] == "reference":
        reference(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3])
