#!/usr/bin/env python3
"""A gpuslice model worker: one process per model (and per GPU share: its MPS active-thread
percentage is fixed when CUDA starts, from CUDA_MPS_ACTIVE_THREAD_PERCENTAGE).

It loads a torchvision model (random weights, fp16), captures one CUDA graph per batch size, and
serves batches the Rust backend places in shared memory: inputs at the start of the shared file,
outputs after them. The protocol is one JSON object per line:
  worker -> backend: {"ready": true, "batches": [...], "input_bytes": N, "output_bytes": M,
                      "engine": "torch-graph-VERSION", "sms": SM_COUNT}
  backend -> worker: {"run": SEQ, "batch": B}          (B inputs already written to shared memory)
  worker -> backend: {"done": SEQ, "h2d_ms": .., "infer_ms": .., "d2h_ms": ..}
  backend -> worker: {"quit": true}
With --input-ipc HANDLE the inputs come instead from a GPU buffer of another process (the NetML
transfer's batch buffer, fp32 images back to back), opened once through CUDA IPC: each batch is
cast to fp16 on the GPU, never crossing the host (h2d_ms then times that device-side copy).
Stage times come from CUDA events, whose completion the worker polls (event.query()), never a
stream callback. With --fake-ms the worker needs no GPU: it sleeps that long per batch (for tests).
"""
import argparse, json, mmap, os, sys, time

IMAGE = (3, 224, 224)
CLASSES = 1000


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def poll(event):
    while not event.query():
        pass


def open_ipc_input(handle_hex, largest):
    """The fp32 batch buffer another process exported, as a tensor on this GPU (no copy)."""
    import cupy, torch

    pointer = cupy.cuda.runtime.ipcOpenMemHandle(bytes.fromhex(handle_hex))
    count = largest * IMAGE[0] * IMAGE[1] * IMAGE[2]

    class Exported:
        __cuda_array_interface__ = {"shape": (count,), "typestr": "<f4", "data": (pointer, False), "version": 3}

    return torch.as_tensor(Exported(), device="cuda").view(largest, *IMAGE)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batches", default="1,2,4,8,16,32")
    p.add_argument("--shm", required=True, help="shared file for inputs and outputs")
    p.add_argument("--fake-ms", type=float, default=None)
    p.add_argument("--input-ipc", default=None, help="CUDA IPC handle (hex) of an fp32 input buffer")
    args = p.parse_args()
    batches = sorted(int(b) for b in args.batches.split(","))
    largest = batches[-1]
    input_bytes = largest * IMAGE[0] * IMAGE[1] * IMAGE[2] * 2
    output_bytes = largest * CLASSES * 2
    fd = os.open(args.shm, os.O_RDWR)
    shared = mmap.mmap(fd, input_bytes + output_bytes)

    if args.fake_ms is not None:
        reply({"ready": True, "batches": batches, "input_bytes": input_bytes, "output_bytes": output_bytes,
               "engine": "fake", "sms": 0})
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("quit"):
                return
            time.sleep(args.fake_ms / 1000)
            shared[input_bytes:input_bytes + 8] = shared[0:8]  # echo: proves the worker read the input
            reply({"done": msg["run"], "h2d_ms": 0.0, "infer_ms": args.fake_ms, "d2h_ms": 0.0})
        return

    import torch, torchvision
    torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, args.model)(weights=None).half().cuda().eval()
    host_in = torch.frombuffer(shared, dtype=torch.float16, count=input_bytes // 2).view(largest, *IMAGE)
    host_out = torch.frombuffer(shared, dtype=torch.float16, count=output_bytes // 2, offset=input_bytes).view(largest, CLASSES)
    static_in = torch.zeros(largest, *IMAGE, device="cuda", dtype=torch.float16)
    source_in = host_in
    if args.input_ipc is not None:
        source_in = open_ipc_input(args.input_ipc, largest)
    graphs, outputs = {}, {}
    # The graphs never run at once: one memory pool for all, sized by the largest batch.
    graph_pool = torch.cuda.graph_pool_handle()
    with torch.inference_mode():
        for b in batches:
            x = static_in[:b]
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    model(x)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=graph_pool):
                outputs[b] = model(x)
            graphs[b] = g
    torch.cuda.synchronize()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    reply({"ready": True, "batches": batches, "input_bytes": input_bytes, "output_bytes": output_bytes,
           "engine": f"torch-graph-{torch.__version__}", "sms": torch.cuda.get_device_properties(0).multi_processor_count})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("quit"):
            return
        b = msg["batch"]
        events[0].record()
        static_in[:b].copy_(source_in[:b], non_blocking=True)
        events[1].record()
        graphs[b].replay()
        events[2].record()
        host_out[:b].copy_(outputs[b], non_blocking=True)
        events[3].record()
        poll(events[3])
        reply({
            "done": msg["run"],
            "h2d_ms": events[0].elapsed_time(events[1]),
            "infer_ms": events[1].elapsed_time(events[2]),
            "d2h_ms": events[2].elapsed_time(events[3]),
        })


if __name__ == "__main__":
    main()
