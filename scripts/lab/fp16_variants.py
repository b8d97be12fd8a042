#!/usr/bin/env python3
"""Which setting makes fp16 convolutions right under an MPS slice (issue 45; fp16_slices.py found
eager fp16 convolutions wrong at 30-60% on the H100, fp32 right). One process per variant:

  fp16_variants.py reference DIR                   (no MPS) eager fp16/bf16 outputs per model
  fp16_variants.py check DIR VARIANT LABEL         (under MPS) eager outputs against the reference

VARIANT: default | no-cudnn | cudnn-v7 (TORCH_CUDNN_V8_API_DISABLED=1, set by the caller) |
benchmark | channels-last | bf16. Prints one JSON line per model and batch."""
import json, sys
import torch, torchvision

MODELS = ["resnet50", "mobilenet_v3_large"]
BATCHES = [1, 2, 8, 16]


def model_of(name, dtype, channels_last):
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval().cuda().to(dtype)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def inputs():
    g = torch.Generator().manual_seed(1)
    return {b: torch.randn(b, 3, 224, 224, generator=g) for b in BATCHES}


def run(variant):
    torch.backends.cudnn.enabled = variant != "no-cudnn"
    torch.backends.cudnn.benchmark = variant == "benchmark"
    dtype = torch.bfloat16 if variant == "bf16" else torch.float16
    channels_last = variant == "channels-last"
    out = {}
    with torch.inference_mode():
        for name in MODELS:
            model = model_of(name, dtype, channels_last)
            for b, x in inputs().items():
                x = x.cuda().to(dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                model(x)  # a first run (autotuning, lazy loading), then the one compared
                out[name, b] = model(x).float().cpu()
    return out


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "reference":
        torch.save({"fp16": run("default"), "bf16": run("bf16")}, path)
    else:
        variant, label = sys.argv[3], sys.argv[4]
        ref = torch.load(path)["bf16" if variant == "bf16" else "fp16"]
        for (name, b), got in run(variant).items():
            want = ref[name, b]
            diff = float((got - want).abs().nan_to_num(float("inf")).max())
            print(json.dumps({"label": label, "variant": variant, "model": name, "batch": b, "nan": int(torch.isnan(got).sum()),
                              "max_abs_diff": diff, "scale": float(want.abs().max()), "wrong": diff > 0.05 * float(want.abs().max())}))
