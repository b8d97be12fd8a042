#!/usr/bin/env python3
"""A gpuslice model worker: one process per model (and per GPU share: its MPS active-thread
percentage is fixed when CUDA starts, from CUDA_MPS_ACTIVE_THREAD_PERCENTAGE).

It loads the model's program (--model: `torchvision:NAME` or a bare torchvision name, random
weights seeded with 0, for benchmarks; or a TorchScript `.pt` / torch.export `.pt2` file), in half
precision unless --fp32, captures one CUDA graph per batch size, and serves batches the Rust
backend places in shared memory. --io gives the model's input and output tensor (name, datatype,
dims per request, as JSON): one request is one row of each, in its wire datatype; the worker casts
inputs to the compute precision on the GPU and outputs back to their datatype inside the graph. The shared file has --slots slots of
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
stream callback. With --packet-pool FILE (--packet-layout SLOT,HEADER,PAYLOAD bytes) the worker maps the node's NetML
packet pool: a run command's "gather": [LO, HI] says that rows LO..HI of the batch came as packets,
and that the slot's input area holds, from row LO on, each such row's packet slots (u32, payload
order, ceil(row bytes / PAYLOAD) each) back to back. The worker copies the other rows from the slot
and gathers those rows' payloads from the pool on the GPU (one index_select over the page-locked
pool, read through unified addressing: the GPU gather); without a GPU (--fake-ms) it gathers them
on the CPU. The "ready" line says which ("packet_gather": "gpu" or "cpu").
With --fake-ms the worker needs no GPU and no package beyond Python's own (numpy, where installed,
only sums faster): it sleeps that long per batch and writes, for each row, every output element =
the sum of that row's input elements (accumulated in double precision; cast to a float output's
datatype, truncated toward zero and clamped to an integer output's range, nonzero for BOOL): a
checkable answer per request, for tests.
With --quick-start the worker chooses cuDNN's algorithms the legacy way: it is ready several times
sooner for a model with many convolution shapes and runs somewhat slower, until a full worker
takes its place.
With --green-sms 40,80 the worker makes one green context per SM count up front (creating one
takes 80-160 ms, so never on the critical path) and captures every batch's graph on a stream of
each: one process and one copy of the model serve at several SM partitions, and a batch names the
partition it runs on (a reallocation without a standby process).
"""
import argparse, collections, contextlib, json, mmap, os, select, struct, sys, time

# Open Inference Protocol datatypes: (numpy type code, torch dtype name)
DATATYPES = {"BOOL": ("?", "bool"), "UINT8": ("u1", "uint8"), "INT8": ("i1", "int8"), "INT16": ("<i2", "int16"),
             "INT32": ("<i4", "int32"), "INT64": ("<i8", "int64"), "FP16": ("<f2", "float16"),
             "FP32": ("<f4", "float32"), "FP64": ("<f8", "float64")}
# The same datatypes as `struct` format characters (little-endian), for the GPU-less worker.
STRUCT_CODES = {"BOOL": "?", "UINT8": "B", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "FP16": "e",
                "FP32": "f", "FP64": "d"}
SIZES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}


def row_bytes(tensor):
    n = 1
    for d in tensor["dims"]:
        n *= d
    return n * SIZES[tensor["datatype"]]


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


def open_ipc_input(handle_hex, largest, dims):
    """The fp32 batch buffer another process exported, as a tensor on this GPU (no copy)."""
    import cupy, torch

    pointer = cupy.cuda.runtime.ipcOpenMemHandle(bytes.fromhex(handle_hex))
    count = largest
    for d in dims:
        count *= d

    class Exported:
        __cuda_array_interface__ = {"shape": (count,), "typestr": "<f4", "data": (pointer, False), "version": 3}

    return torch.as_tensor(Exported(), device="cuda").view(largest, *dims)


def load_model(source, torch):
    """The model `source` names, on the GPU, in eval mode."""
    if source.endswith(".pt"):
        return torch.jit.load(source, map_location="cuda").eval()
    if source.endswith(".pt2"):
        return torch.export.load(source).module().cuda()
    import torchvision
    name = source.removeprefix("torchvision:")
    torch.manual_seed(0)
    # Random weights drawn where they run, not drawn on the CPU and copied over.
    with torch.device("cuda"):
        return getattr(torchvision.models, name)(weights=None).eval()


def map_packet_pool(path, layout):
    """The packet pool's file mapped (shared) and its layout (slot, header, payload bytes)."""
    slot_bytes, header, payload = (int(x) for x in layout.split(","))
    with open(path, "r+b") as f:
        pool = mmap.mmap(f.fileno(), 0)
    if len(pool) % slot_bytes or not 0 < header < header + payload <= slot_bytes:
        sys.exit(f"packet pool {path}: layout {layout} does not fit its {len(pool)} bytes")
    return pool, (slot_bytes, header, payload)


def check_packet_slots(lowest, highest, slots):
    """A gather's packet slots checked against the pool's `slots`: a slot past its end would read
    out of bounds (on the GPU: a fault that ends the process)."""
    if lowest < 0 or highest >= slots:
        sys.exit(f"packet slot out of the pool's {slots}: a bad gather command")


def packet_slots(words, count, slots):
    """A gathered batch's packet slots (`count` words of the tensor `words`), checked."""
    got = words[:count]
    if count:
        check_packet_slots(int(got.min()), int(got.max()), slots)
    return got


def gather_on_cpu(shared, start, rows, pool, layout, row_in):
    """Without a GPU: rows LO..HI of the slot at `start` from their packets in `pool`."""
    (lo, hi), (slot_bytes, header, payload) = rows, layout
    per_row = -(-row_in // payload)
    first = start + lo * row_in
    with memoryview(shared)[first:first + 4 * (hi - lo) * per_row] as words:
        slots = struct.unpack(f"<{len(words) // 4}I", words)
    if slots:
        check_packet_slots(min(slots), max(slots), len(pool) // slot_bytes)
    gathered = bytearray()
    for r in range(hi - lo):
        row = b"".join(pool[k * slot_bytes + header:k * slot_bytes + header + payload]
                       for k in slots[r * per_row:(r + 1) * per_row])
        gathered += row[:row_in]
    shared[first:first + len(gathered)] = gathered


def row_sums(numpy, shared, start, batch, t_in):
    """Each of the batch's input rows summed in double precision: by numpy where it is installed
    (`numpy` the module, else None), else by Python alone (the same sums, ~2 ms a 3x224x224 row)."""
    kind, n = t_in["datatype"], row_bytes(t_in) // SIZES[t_in["datatype"]]
    if numpy is not None:
        rows = numpy.frombuffer(shared, dtype=DATATYPES[kind][0], count=batch * n, offset=start).reshape(batch, n)
        return rows.sum(axis=1, dtype=numpy.float64).tolist()
    code, size = STRUCT_CODES[kind], n * SIZES[kind]
    if code == "e" or sys.byteorder != "little":  # no native view of these: unpacked (3x slower)
        row = struct.Struct(f"<{n}{code}")
        return [float(sum(row.unpack_from(shared, start + r * size))) for r in range(batch)]
    # Rows of zeros (load tests send no payload) are told by a byte compare, 20x faster.
    zeros, sums = bytes(size), []
    with memoryview(shared) as whole:
        for r in range(batch):
            row = whole[start + r * size:start + (r + 1) * size]
            sums.append(0.0 if bytes(row) == zeros else float(sum(row.cast(code))))
    return sums


def as_datatype(value, kind):
    """A sum as an element of datatype `kind`: floats as they are, integers truncated toward zero
    and clamped to the type's range, BOOL nonzero."""
    if kind == "BOOL":
        return value != 0
    if kind.startswith("FP"):
        return value
    bits = 8 * SIZES[kind]
    low, high = (0, 2 ** bits - 1) if kind.startswith("UINT") else (-2 ** (bits - 1), 2 ** (bits - 1) - 1)
    return min(max(int(value), low), high)


def fake_answer(numpy, shared, start, batch, io, input_bytes):
    """Each row's outputs: every element the sum of the row's inputs, in the output's datatype."""
    t_in, t_out = io["inputs"][0], io["outputs"][0]
    kind, per_row = t_out["datatype"], row_bytes(t_out) // SIZES[t_out["datatype"]]
    out = b"".join(struct.pack(f"<{per_row}{STRUCT_CODES[kind]}", *[as_datatype(s, kind)] * per_row)
                   for s in row_sums(numpy, shared, start, batch, t_in))
    shared[start + input_bytes:start + input_bytes + len(out)] = out


def optional_numpy():
    """numpy if installed (the GPU-less worker sums rows faster with it), else None."""
    try:
        import numpy
        return numpy
    except ImportError:
        return None


def main():
    began = time.monotonic()
    # Where the start-up went (seconds), for the "ready" line: a slow start is found here.
    start_s = {}

    def phase(name, since):
        start_s[name] = round(time.monotonic() - since, 3)
        return time.monotonic()
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batches", default="1,2,4,8,16,32")
    p.add_argument("--shm", required=True, help="shared file for inputs and outputs")
    p.add_argument("--slots", type=int, default=1, help="batches the shared file holds at once")
    p.add_argument("--fake-ms", type=float, default=None)
    p.add_argument("--input-ipc", default=None, help="CUDA IPC handle (hex) of an fp32 input buffer")
    p.add_argument("--packet-pool", default=None, help="the node's NetML packet pool file (rows to gather come from it)")
    p.add_argument("--packet-layout", default="2048,88,1024", help="the packet pool's slot, header and payload bytes")
    p.add_argument("--green-sms", default=None, help="SM counts of green contexts to serve on (e.g. 40,80)")
    p.add_argument("--io", required=True, help="the model's input and output tensors, JSON")
    p.add_argument("--fp32", action="store_true", help="compute in the model's own precision, not fp16")
    p.add_argument("--quick-start", action="store_true",
                   help="cuDNN's legacy algorithm choice: each batch size's first run in 0.1-0.5 s instead of 1.3-4.3 s "
                        "(mobilenet_v3_large, H200), graphs 2-10%% slower; for a worker a full one replaces")
    args = p.parse_args()
    io = json.loads(args.io)
    t_in, t_out = io["inputs"][0], io["outputs"][0]
    batches = sorted(int(b) for b in args.batches.split(","))
    green_sms = [int(n) for n in args.green_sms.split(",")] if args.green_sms else []
    largest = batches[-1]
    input_bytes = largest * row_bytes(t_in)
    output_bytes = largest * row_bytes(t_out)
    slot_bytes = input_bytes + output_bytes
    fd = os.open(args.shm, os.O_RDWR)
    shared = mmap.mmap(fd, args.slots * slot_bytes)
    commands = Commands()

    pool, layout = map_packet_pool(args.packet_pool, args.packet_layout) if args.packet_pool else (None, None)
    gathers = {"packet_gather": "cpu"} if pool is not None else {}

    if args.fake_ms is not None:
        numpy = optional_numpy()  # before "ready": an import on the first batch would stall it
        reply({"ready": True, "batches": batches, "input_bytes": input_bytes, "output_bytes": output_bytes,
               "engine": "fake", "sms": 0, "green_sms": green_sms, **gathers})
        while (msg := commands.next()) is not None and not msg.get("quit"):
            time.sleep(args.fake_ms / 1000)
            start = msg.get("slot", 0) * slot_bytes
            if "gather" in msg:
                gather_on_cpu(shared, start, msg["gather"], pool, layout, row_bytes(t_in))
            fake_answer(numpy, shared, start, msg["batch"], io, input_bytes)
            reply({"done": msg["run"], "h2d_ms": 0.0, "infer_ms": args.fake_ms, "d2h_ms": 0.0})
        return

    mark = phase("python", began)
    if args.quick_start:
        # Read by PyTorch at its first convolution: cuDNN's v7 algorithm query in place of the
        # v8 API's per-shape execution plans (bench/results/2026-12-02-h200-capture-cost).
        os.environ["TORCH_CUDNN_V8_API_DISABLED"] = "1"
    import torch
    mark = phase("import_torch", mark)
    # cuDNN's default algorithm choice, not its autotuner: on the H200 the autotuner's graphs ran
    # within -3%..+7% of the default's, but tuning every batch size took 1.2-3.6 s a size and
    # model, a third of a worker's start (bench/results/2026-12-02-h200-worker-start-fast). (Half
    # precision under MPS percentages of 30-60% computes wrong values on Hopper with either
    # choice, and without cuDNN, where green contexts are exact:
    # bench/results/2026-12-08-h100-fp16-slices; repository models compute in fp32 unless told.)
    torch.backends.cudnn.benchmark = False
    wire_in, wire_out = (getattr(torch, DATATYPES[t["datatype"]][1]) for t in (t_in, t_out))
    model = load_model(args.model, torch)
    mark = phase("load_model", mark)
    # Floating inputs are cast to the compute precision on the GPU; others (ids) stay as they are.
    compute_in = torch.float16 if not args.fp32 and wire_in.is_floating_point else wire_in
    if not args.fp32:
        model = model.half()
    host_in = [torch.frombuffer(shared, dtype=wire_in, count=input_bytes // SIZES[t_in["datatype"]],
                                offset=k * slot_bytes).view(largest, *t_in["dims"]) for k in range(args.slots)]
    host_out = [torch.frombuffer(shared, dtype=wire_out, count=output_bytes // SIZES[t_out["datatype"]],
                                 offset=k * slot_bytes + input_bytes).view(largest, *t_out["dims"])
                for k in range(args.slots)]
    # Page-locks the shared mapping so the copies to and from the GPU are DMA, asynchronous and
    # at full bus speed, instead of going through the driver's staging buffer.
    status = torch.cuda.cudart().cudaHostRegister(host_in[0].data_ptr(), args.slots * slot_bytes, 0)
    pinned = int(status) == 0
    if not pinned:
        print(f"cudaHostRegister of the shared memory failed ({status}): copies go through staging", file=sys.stderr)
    static_in = torch.zeros(largest, *t_in["dims"], device="cuda", dtype=compute_in)
    # The inputs cross the bus in their wire datatype, from the page-locked slot into this buffer
    # (a same-type copy is a plain asynchronous DMA), and are cast on the GPU: a copy that also
    # converts would go through a temporary host tensor.
    staging_in = static_in if compute_in == wire_in else torch.zeros(largest, *t_in["dims"], device="cuda", dtype=wire_in)
    source_in = host_in
    pool_registered = False
    if pool is not None:
        # The pool, page-locked, read by the GPU where the packets landed, as 8-byte words (the
        # header and payload are whole words): the gather's reads are full words, not bytes.
        slot_bytes_pool, header, payload = layout
        if header % 8 or payload % 8 or slot_bytes_pool % 8:
            sys.exit(f"packet layout {args.packet_layout}: the GPU gather needs multiples of 8 bytes")
        pool_words = torch.frombuffer(pool, dtype=torch.int64)
        status = torch.cuda.cudart().cudaHostRegister(pool_words.data_ptr(), len(pool), 0)
        pool_registered = int(status) == 0
        if not pool_registered:
            print(f"cudaHostRegister of the packet pool {args.packet_pool} failed ({status}): packets are gathered "
                  "on the CPU", file=sys.stderr)

    if pool_registered:
        class PoolOnDevice:
            __cuda_array_interface__ = {"shape": (len(pool) // 8,), "typestr": "<i8",
                                        "data": (pool_words.data_ptr(), False), "version": 3}

        pool_payloads = torch.as_tensor(PoolOnDevice(), device="cuda").view(-1, slot_bytes_pool // 8)[
            :, header // 8:(header + payload) // 8]
        per_row = -(-row_bytes(t_in) // payload)
        gather_index = torch.empty(largest * per_row, dtype=torch.int32, device="cuda")
        host_words = [torch.frombuffer(shared, dtype=torch.int32, count=input_bytes // 4, offset=k * slot_bytes)
                      for k in range(args.slots)]
        staging_rows = staging_in.view(largest, -1).view(torch.uint8)
        gathers = {"packet_gather": "gpu"}

    def gather_rows(slot, b, lo, hi):
        """Rows lo..hi of the batch from their packets (the GPU gather), the others from the slot."""
        for a, z in ((0, lo), (hi, b)):
            if a < z:
                staging_in[a:z].copy_(source_in[slot][a:z], non_blocking=True)
        count, first = (hi - lo) * per_row, lo * row_bytes(t_in) // 4
        gather_index[:count].copy_(packet_slots(host_words[slot][first:], count, pool_payloads.shape[0]),
                                   non_blocking=True)
        packets = pool_payloads.index_select(0, gather_index[:count]).view(torch.uint8)
        staging_rows[lo:hi].copy_(packets.view(hi - lo, -1)[:, :row_bytes(t_in)])

    if args.input_ipc is not None:
        source_in = [open_ipc_input(args.input_ipc, largest, t_in["dims"])] * args.slots
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
    phase("set_up", mark)
    with torch.inference_mode():
        for k, stream in enumerate(streams):
            for b in batches:
                batch_began = time.monotonic()
                x = static_in[:b]
                torch.cuda.synchronize()
                with current(contexts[k]):
                    with torch.cuda.stream(stream):
                        for _ in range(3):
                            model(x)
                    stream.synchronize()
                    got = tuple(model(x).shape)
                    if got != (b, *t_out["dims"]):
                        sys.exit(f"model {args.model}: output {t_out['name']} has shape {list(got)} for a batch of {b}; "
                                 f"the config declares {[b, *t_out['dims']]}")
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=graph_pool, stream=stream):
                        outputs[k, b] = model(x).to(wire_out)
                    stream.synchronize()
                graphs[k, b] = g
                phase(f"batch_{b}", batch_began)
    torch.cuda.synchronize()
    mark = time.monotonic()
    # One batch of each size through the whole serving path (copy in, cast, graph, copy out): a
    # graph's first launch uploads it, and the eager copy and cast kernels load on first use;
    # done here, not on the first requests served after a start or a switch to this worker.
    with torch.inference_mode():
        for k, stream in enumerate(streams):
            with current(contexts[k]), torch.cuda.stream(stream):
                for b in batches:
                    staging_in[:b].copy_(source_in[0][:b], non_blocking=True)
                    if staging_in is not static_in:
                        static_in[:b].copy_(staging_in[:b])
                    graphs[k, b].replay()
                    host_out[0][:b].copy_(outputs[k, b], non_blocking=True)
            stream.synchronize()
    phase("warm_up", mark)
    phase("total", began)
    # Events per partition and slot: a batch's four stay its own while the next one is launched.
    events = [[[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(args.slots)] for _ in streams]
    reply({"ready": True, "batches": batches, "input_bytes": input_bytes, "output_bytes": output_bytes,
           "engine": f"torch-graph-{torch.__version__}", "sms": torch.cuda.get_device_properties(0).multi_processor_count,
           "green_sms": green_sms, "pinned": pinned, "start_s": start_s, **gathers})
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
            if "gather" in msg and pool_registered:
                gather_rows(slot, b, *msg["gather"])
            else:
                if "gather" in msg:
                    gather_on_cpu(shared, slot * slot_bytes, msg["gather"], pool, layout, row_bytes(t_in))
                staging_in[:b].copy_(source_in[slot][:b], non_blocking=True)
            if staging_in is not static_in:
                static_in[:b].copy_(staging_in[:b])
            e[1].record()
            graphs[k, b].replay()
            e[2].record()
            host_out[slot][:b].copy_(outputs[k, b], non_blocking=True)
            e[3].record()
        running.append((msg["run"], k, e))


if __name__ == "__main__":
    main()
