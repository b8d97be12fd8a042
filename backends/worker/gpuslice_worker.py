#!/usr/bin/env python3
"""A gpuslice model worker: one process per model (and per GPU share: its MPS active-thread
percentage is fixed when CUDA starts, from CUDA_MPS_ACTIVE_THREAD_PERCENTAGE).

It loads a torchvision model (random weights, fp16), captures one CUDA graph per batch size, and
serves batches the Rust backend places in shared memory: inputs at the start of the shared file,
outputs after them. The protocol is one JSON object per line:
  worker -> backend: {"ready": true, "batches": [...], "input_bytes": N, "output_bytes": M,
                      "engine": "torch-graph-VERSION", "sms": SM_COUNT, "green_sms": [...],
                      "pinned": true if the shared memory is page-locked for the GPU}
  backend -> worker: {"run": SEQ, "batch": B, "ctx": K} (B inputs already written to shared memory;
                                                          K: which green context, default 0)
  worker -> backend: {"done": SEQ, "h2d_ms": .., "infer_ms": .., "d2h_ms": ..}
  backend -> worker: {"quit": true}
With --input-ipc HANDLE the inputs come instead from a GPU buffer of another process (the NetML
transfer's batch buffer, fp32 images back to back), opened once through CUDA IPC: each batch is
cast to fp16 on the GPU, never crossing the host (h2d_ms then times that device-side copy).
Stage times come from CUDA events, whose completion the worker polls (event.query()), never a
stream callback. With --fake-ms the worker needs no GPU: it sleeps that long per batch (for tests).
With --green-sms 40,80 the worker makes one green context per SM count up front (creating one
takes 80-160 ms, so never on the critical path) and captures every batch's graph on a stream of
each: one process and one copy of the model serve at several SM partitions, and a batch names the
partition it runs on (a reallocation without a standby process).
"""
import argparse, contextlib, json, mmap, os, sys, time

IMAGE = (3, 224, 224)
CLASSES = 1000


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def poll(event):
    while not event.query():
        pass


@contextlib.contextmanager
def current(context):
    """Makes a green context current (None: leave the device's own): CUDA events belong to the
    context current when they are first recorded, and must match their stream's."""
    if context is None:
        yield
        return
    (getattr(context, "set_context", None) or context.make_current)()
    try:
        yield
    finally:
        (getattr(context, "pop_context", None) or context.pop_current)()


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
    p.add_argument("--green-sms", default=None, help="SM counts of green contexts to serve on (e.g. 40,80)")
    args = p.parse_args()
    batches = sorted(int(b) for b in args.batches.split(","))
    green_sms = [int(n) for n in args.green_sms.split(",")] if args.green_sms else []
    largest = batches[-1]
    input_bytes = largest * IMAGE[0] * IMAGE[1] * IMAGE[2] * 2
    output_bytes = largest * CLASSES * 2
    fd = os.open(args.shm, os.O_RDWR)
    shared = mmap.mmap(fd, input_bytes + output_bytes)

    if args.fake_ms is not None:
        reply({"ready": True, "batches": batches, "input_bytes": input_bytes, "output_bytes": output_bytes,
               "engine": "fake", "sms": 0, "green_sms": green_sms})
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
    # Page-locks the shared mapping so the copies to and from the GPU are DMA, asynchronous and
    # at full bus speed, instead of going through the driver's staging buffer.
    status = torch.cuda.cudart().cudaHostRegister(host_in.data_ptr(), input_bytes + output_bytes, 0)
    pinned = int(status) == 0
    if not pinned:
        print(f"cudaHostRegister of the shared memory failed ({status}): copies go through staging", file=sys.stderr)
    static_in = torch.zeros(largest, *IMAGE, device="cuda", dtype=torch.float16)
    source_in = host_in
    if args.input_ipc is not None:
        source_in = open_ipc_input(args.input_ipc, largest)
    # One stream per partition: the device's own, or one per green context (its SMs only).
    if green_sms:
        from torch.cuda.green_contexts import GreenContext
        contexts = [GreenContext.create(n, 0) for n in green_sms]
        streams = [c.Stream() for c in contexts]
    else:
        contexts = [None]
        streams = [torch.cuda.Stream()]
    graphs, outputs = {}, {}
    # The graphs never run at once: one memory pool for all, sized by the largest batch.
    graph_pool = torch.cuda.graph_pool_handle()
    with torch.inference_mode():
        for k, stream in enumerate(streams):
            for b in batches:
                x = static_in[:b]
                torch.cuda.synchronize()
                with current(contexts[k]):
                    with torch.cuda.stream(stream):
                        for _ in range(3):
                            model(x)
                    stream.synchronize()
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=graph_pool, stream=stream):
                        outputs[k, b] = model(x)
                    stream.synchronize()
                graphs[k, b] = g
    torch.cuda.synchronize()
    events = [[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in streams]
    reply({"ready": True, "batches": batches, "input_bytes": input_bytes, "output_bytes": output_bytes,
           "engine": f"torch-graph-{torch.__version__}", "sms": torch.cuda.get_device_properties(0).multi_processor_count,
           "green_sms": green_sms, "pinned": pinned})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("quit"):
            return
        b, k = msg["batch"], msg.get("ctx", 0)
        e = events[k]
        with current(contexts[k]), torch.cuda.stream(streams[k]):
            e[0].record()
            static_in[:b].copy_(source_in[:b], non_blocking=True)
            e[1].record()
            graphs[k, b].replay()
            e[2].record()
            host_out[:b].copy_(outputs[k, b], non_blocking=True)
            e[3].record()
            poll(e[3])
        reply({
            "done": msg["run"],
            "h2d_ms": e[0].elapsed_time(e[1]),
            "infer_ms": e[1].elapsed_time(e[2]),
            "d2h_ms": e[2].elapsed_time(e[3]),
        })


if __name__ == "__main__":
    main()
