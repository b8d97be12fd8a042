#!/usr/bin/env python3
"""Steady ModelInfer calls through tritonclient while the test kills the model's workers: every
call must be answered (OK, or UNAVAILABLE naming why) and answered correctly when OK.

Usage: fault_load.py ADDRESS MODEL SECONDS
Prints one JSON line: calls, ok, unavailable, other errors, per second (from the start) the
calls that failed, the seconds in which ModelReady said the model was not ready (polled every
20 ms), and whether it was ready at the end.
"""
import json, sys, threading, time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

RATE = 100  # calls per second, from 4 threads


def main():
    address, model, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = grpcclient.InferenceServerClient(url=address)
    meta = client.get_model_metadata(model)
    (inp,), (out,) = meta.inputs, meta.outputs
    dims = [1] + list(inp.shape[1:])
    counts = {"calls": 0, "ok": 0, "unavailable": 0, "other": [], "wrong": 0}
    failed_by_second = {}
    lock = threading.Lock()
    start = time.monotonic()

    def caller(k):
        rng = np.random.default_rng(k)
        n = 0
        while time.monotonic() - start < seconds:
            # Paced: each of the 4 callers a quarter of RATE.
            n += 1
            wait = start + n * 4 / RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            x = rng.standard_normal(dims).astype(np.float32)
            t = grpcclient.InferInput(inp.name, dims, inp.datatype)
            t.set_data_from_numpy(x)
            second = int(time.monotonic() - start)
            try:
                r = client.infer(model, [t], outputs=[grpcclient.InferRequestedOutput(out.name)], client_timeout=30)
                y = r.as_numpy(out.name)
                good = np.allclose(y, np.full(y.shape, x.sum()), rtol=1e-4, atol=1e-4)
                with lock:
                    counts["calls"] += 1
                    counts["ok"] += 1
                    counts["wrong"] += 0 if good else 1
            except InferenceServerException as e:
                with lock:
                    counts["calls"] += 1
                    failed_by_second[second] = failed_by_second.get(second, 0) + 1
                    if "UNAVAILABLE" in str(e.status()):
                        counts["unavailable"] += 1
                    else:
                        counts["other"].append(f"{e.status()}: {e.message()}")

    not_ready = set()

    def watch_ready():
        while time.monotonic() - start < seconds:
            if not client.is_model_ready(model):
                not_ready.add(int(time.monotonic() - start))
            time.sleep(0.02)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=watch_ready))
    [t.start() for t in threads]
    [t.join() for t in threads]
    counts["failed_by_second"] = failed_by_second
    counts["not_ready_seconds"] = sorted(not_ready)
    counts["ready_at_end"] = client.is_model_ready(model)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
