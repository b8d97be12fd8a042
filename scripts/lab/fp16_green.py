#!/usr/bin/env python3
"""fp16 on green contexts (SM partitions) instead of MPS percentages (issue 45): eager fp16
resnet50 and mobilenet_v3_large on the whole device (the reference), then on a stream of green
contexts of several SM counts in the same process, each compared with the reference. No MPS.
Prints one JSON line per (SMs, model, batch)."""
import contextlib, json, sys
import torch, torchvision
from torch.cuda.green_contexts import GreenContext

MODELS, BATCHES = ["resnet50", "mobilenet_v3_large"], [1, 2, 8, 16]


@contextlib.contextmanager
def current(context):
    (getattr(context, "set_context", None) or context.make_current)()
    try:
        yield
    finally:
        (getattr(context, "pop_context", None) or context.pop_current)()


g = torch.Generator().manual_seed(1)
xs = {b: torch.randn(b, 3, 224, 224, generator=g) for b in BATCHES}
sms = [int(n) for n in (sys.argv[1] if len(sys.argv) > 1 else "16,32,48,64,80").split(",")]
with torch.inference_mode():
    for name in MODELS:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval().cuda().half()
        want = {b: model(x.cuda().half()).float().cpu() for b, x in xs.items()}
        for n in sms:
            ctx = GreenContext.create(n, 0)
            stream = ctx.Stream()
            for b, x in xs.items():
                with current(ctx), torch.cuda.stream(stream):
                    inp = x.cuda().half()
                    model(inp)
                    got = model(inp).float()
                stream.synchronize()
                got = got.cpu()
                d = float((got - want[b]).abs().nan_to_num(float("inf")).max())
                print(json.dumps({"sms": n, "model": name, "batch": b, "nan": int(torch.isnan(got).sum()), "max_abs_diff": d,
                                  "scale": float(want[b].abs().max()), "wrong": d > 0.05 * float(want[b].abs().max())}), flush=True)
