#!/usr/bin/env python3
"""A gpuslice model worker: one process per model (and per GPU share: its MPS active-thread
percentage is fixed when CUDA starts, from CUDA_MPS_ACTIVE_THREAD_PERCENTAGE).

It loads a torchvision model (random weights, fp16), captures one CUDA graph per batch size, and
serves batches the Rust backend places in shared memory. The shared file has --slots slots of
N + M bytes, each its inputs then its outputs, so the backend can hand over the next batch while
one runs: batches are launched as their commands come and run in order on the GPU, and each is
answered when its last CUDA event completes. The protocol is one JSON object per line:
  worker -> backend: {"ready": true, "batches": [...], "input_bytes": N, "output_bytes": M,
                      "engine": "torch-graph-VERSION", "sms": SM_COUNT, "green_sms": [...],
                      "pinned": true if the shared memory is page-locked for the GPU}
  backend -> worker: {"run": SEQ, "batch": B, "ctx": K, "slot": S} (B inputs already written to
                      slot S, default 0; K: which green context, default 0)
  worker -> backend: {"done": SEQ, "h2d_ms": .., "infer_ms": .., "d2h_ms": ..} (in order)
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
import argparse, collections, contextlib, json, mmap, os, select, sys, time

IMAGE = (3, 224, 224)
CLASSES = 1000


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Commands:
    """The backend's command lines on stdin, read without Python's buffering so that `waiting`
    can tell, without blocking, whether one has come."""

    def __init__(self):
        self.fd, self.buffer = sys.stdin.fileno(), b""

    def waiting(self):
        return b"\n" in self.buffer or bool(select.select([self.fd], [], [], 0)[0])

    def next(self):
        """The next command (waiting for it), or None once stdin is closed."""
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


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
    p.add_argument("--slots", type=int, default=1, help="batches the shared file holds at once")
    p.add_argument("--fake-ms", type=float, default=None)
    p.add_argument("--input-ipc", default=None, help="CUDA IPC handle (hex) of an fp32 input buffer")
    p.add_argument("--green-sms", default=None, help="SM counts of green contexts to serve on (e.g. 40,80)")
    args = p.parse_args()
    batches = sorted(int(b) for b in args.batches.split(","))
    green_sms = [int(n) for n in args.green_sms.split(",")] if args.green_sms else []
    largest = batches[-1]
    input_bytes = largest * IMAGE[0] * IMAGE[1] * IMAGE[2] * 2
    output_bytes = largest * CLASSES * 2
    slot_bytes = input_bytes + output_bytes
    fd = os.open(args.shm, os.O_RDWR)
    shared = mmap.mmap(fd, args.slots * slot_bytes)
    commands = Commands()

    if args.fake_ms is not None:
        reply({"ready": True, "batches": batches, "input_bytes": input_bytes, "output_bytes": output_bytes,
               "engine": "fake", "sms": 0, "green_sms": green_sms})
        while (msg := commands.next()) is not None and not msg.get("quit"):
            time.sleep(args.fake_ms / 1000)
            start = msg.get("slot", 0) * slot_bytes
            # Echo: proves the worker read this slot's input.
            shared[start + input_bytes:start + input_bytes + 8] = shared[start:start + 8]
            reply({"done": msg["run"], "h2d_ms": 0.0, "infer_ms": args.fake_ms, "d2h_ms": 0.0})
        return

    import torch, torchvision
    torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, args.model)(weights=None).half().cuda().eval()
    host_in = [torch.frombuffer(shared, dtype=torch.float16, count=input_bytes // 2, offset=k * slot_bytes)
               .view(largest, *IMAGE) for k in range(args.slots)]
    host_out = [torch.frombuffer(shared, dtype=torch.float16, count=output_bytes // 2,
                                 offset=k * slot_bytes + input_bytes).view(largest, CLASSES) for k in range(args.slots)]
    # Page-locks the shared mapping so the copies to and from the GPU are DMA, asynchronous and
    # at full bus speed, instead of going through the driver's staging buffer.
    status = torch.cuda.cudart().cudaHostRegister(host_in[0].data_ptr(), args.slots * slot_bytes, 0)
    pinned = int(status) == 0
    if not pinned:
        print(f"cudaHostRegister of the shared memory failed ({status}): copies go through staging", file=sys.stderr)
    static_in = torch.zeros(largest, *IMAGE, device="cuda", dtype=torch.float16)
    source_in = host_in
    if args.input_ipc is not None:
        source_in = [open_ipc_input(args.input_ipc, largest)] * args.slots
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
    # Events per partition and slot: a batch's four stay its own while the next one is launched.
    events = [[[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(args.slots)] for _ in streams]
    reply({"ready": True, "batches": batches, "input_bytes": input_bytes, "output_bytes": output_bytes,
           "engine": f"torch-graph-{torch.__version__}", "sms": torch.cuda.get_device_properties(0).multi_processor_count,
           "green_sms": green_sms, "pinned": pinned})
    running = collections.deque()  # (seq, partition, events), in launch order

    def answer_oldest():
        seq, _, e = running.popleft()
        reply({"done": seq, "h2d_ms": e[0].elapsed_time(e[1]), "infer_ms": e[1].elapsed_time(e[2]),
               "d2h_ms": e[2].elapsed_time(e[3])})

    while True:
        # Polls the oldest batch's last event (never a stream callback) until it completes or a
        # command comes.
        if running and not commands.waiting():
            if running[0][2][3].query():
                answer_oldest()
            continue
        msg = commands.next()
        if msg is None or msg.get("quit"):
            return
        b, k, slot = msg["batch"], msg.get("ctx", 0), msg.get("slot", 0)
        # Batches on two partitions would run at once and share the static input: finish the
        # other partition's first.
        while running and running[-1][1] != k:
            while not running[0][2][3].query():
                pass
            answer_oldest()
        e = events[k][slot]
        with current(contexts[k]), torch.cuda.stream(streams[k]):
            e[0].record()
            static_in[:b].copy_(source_in[slot][:b], non_blocking=True)
            e[1].record()
            graphs[k, b].replay()
            e[2].record()
            host_out[slot][:b].copy_(outputs[k, b], non_blocking=True)
            e[3].record()
        running.append((msg["run"], k, e))


if __name__ == "__main__":
    main()
