#!/usr/bin/env python3
"""How many MPS clients one GPU takes (issue 45): starts up to N processes that each create a
CUDA context through the driver API (ctypes, no framework) under the running MPS daemon and hold
it, until one fails; prints how many held a context and the first failure's CUDA error.

  mps_clients.py [N]      (CUDA_MPS_PIPE_DIRECTORY set to a running daemon's)"""
import ctypes, json, subprocess, sys, time

CHILD = r"""
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
for step, call in (("cuInit", lambda: cuda.cuInit(0)), ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(dev), 0)),
                   ("cuCtxCreate", lambda: cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)),
                   ("cuMemAlloc", lambda: cuda.cuMemAlloc_v2(ctypes.byref(ctypes.c_void_p()), 1 << 20))):
    rc = call()
    if rc:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        print(f"fail {step} {rc} {name.value.decode() if name.value else '?'}", flush=True)
        sys.exit(1)
print("ok", flush=True)
sys.stdin.read()
"""


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    held, failure = [], None
    began = time.monotonic()
    for _ in range(limit):
        p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline().strip()
        if line != "ok":
            failure = line or f"exit {p.wait()}"
            break
        held.append(p)
    print(json.dumps({"clients_held": len(held), "asked": limit, "first_failure": failure,
                      "seconds": round(time.monotonic() - began, 1)}))
    for p in held:
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    main()
