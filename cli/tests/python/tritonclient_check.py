#!/usr/bin/env python3
"""tritonclient, unchanged, against `gpuslice serve --model-repository ...`: health, repository
index, metadata, ModelInfer from 32 concurrent callers each checked, refusals with the protocol's
codes, and an unload while requests are queued.

Usage: tritonclient_check.py ADDRESS MODEL --expect sums            (GPU-less workers: every output
                                                                     element is the row's input sum)
       tritonclient_check.py ADDRESS MODEL --expect file --program PATH [--fp16]
                                                                    (outputs equal PyTorch's run of
                                                                     the same file, within fp16
                                                                     tolerance)
Exits non-zero on any failure; prints one JSON line of what it measured.
"""
import argparse, json, threading, time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

CALLERS = 32


def expect_code(code, call):
    try:
        call()
    except InferenceServerException as e:
        assert code in str(e.status()), f"{code} expected, got {e.status()}: {e.message()}"
        return e.message()
    raise AssertionError(f"{code} expected, the call succeeded")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("model")
    p.add_argument("--expect", choices=["sums", "file"], required=True)
    p.add_argument("--program")
    p.add_argument("--fp16", action="store_true", help="the server computes in fp16 (the config's fp16 = true)")
    p.add_argument("--skip-unload", action="store_true")
    args = p.parse_args()
    client = grpcclient.InferenceServerClient(url=args.address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(args.model) and not client.is_model_ready("no_such_model")
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index.get(args.model) == "READY", index
    meta = client.get_model_metadata(args.model)
    (inp,), (out,) = meta.inputs, meta.outputs
    assert inp.shape[0] == -1 and out.shape[0] == -1, meta
    dims = list(inp.shape[1:])
    dtype = {"FP32": np.float32, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64}[inp.datatype]

    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal([1 + k % 3] + dims).astype(dtype) for k in range(CALLERS)]
    results, errors = [None] * CALLERS, []

    def call(k):
        try:
            x = grpcclient.InferInput(inp.name, list(inputs[k].shape), inp.datatype)
            x.set_data_from_numpy(inputs[k])
            r = client.infer(args.model, [x], outputs=[grpcclient.InferRequestedOutput(out.name)])
            results[k] = r.as_numpy(out.name)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"caller {k}: {e}")

    threads = [threading.Thread(target=call, args=(k,)) for k in range(CALLERS)]
    started = time.time()
    [t.start() for t in threads]
    [t.join() for t in threads]
    elapsed = time.time() - started
    assert not errors, errors
    worst = 0.0
    if args.expect == "sums":
        for k, got in enumerate(results):
            assert got.shape == (inputs[k].shape[0], *out.shape[1:]), (k, got.shape)
            sums = inputs[k].reshape(inputs[k].shape[0], -1).sum(axis=1, dtype=np.float64)
            want = np.broadcast_to(sums.reshape(-1, *[1] * (got.ndim - 1)), got.shape)
            worst = max(worst, float(np.max(np.abs(got - want))))
            assert np.allclose(got, want, rtol=1e-4, atol=1e-3), f"caller {k} got another's answer or none"
    else:
        import torch
        model = torch.jit.load(args.program, map_location="cuda").eval()
        if args.fp16:
            model = model.half()
        wrong = []
        for k, got in enumerate(results):
            x = torch.from_numpy(inputs[k]).cuda()
            with torch.inference_mode():
                want = model(x.half() if args.fp16 else x).float().cpu().numpy()
            diff = float(np.max(np.abs(got - want)))
            scale = float(np.max(np.abs(want))) or 1.0
            worst = max(worst, diff / scale)
            if not diff <= 2e-2 * scale + 1e-3:
                wrong.append(f"caller {k} ({inputs[k].shape[0]} rows): max |diff| {diff} (scale {scale})")
        assert not wrong, f"{len(wrong)} of {CALLERS} callers differ from PyTorch: {wrong[:4]}"

    # Refusals, with the protocol's codes and the names in the message.
    bad_shape = grpcclient.InferInput(inp.name, [1] + dims + [1], inp.datatype)
    bad_shape.set_data_from_numpy(np.zeros([1] + dims + [1], dtype))
    message = expect_code("INVALID_ARGUMENT", lambda: client.infer(args.model, [bad_shape]))
    assert inp.name in message, message
    other = "INT64" if inp.datatype != "INT64" else "FP32"
    bad_type = grpcclient.InferInput(inp.name, [1] + dims, other)
    bad_type.set_data_from_numpy(np.zeros([1] + dims, np.int64 if other == "INT64" else np.float32))
    message = expect_code("INVALID_ARGUMENT", lambda: client.infer(args.model, [bad_type]))
    assert inp.datatype in message, message
    expect_code("NOT_FOUND", lambda: client.infer("no_such_model", [bad_type]))

    unloaded_ok = None
    if not args.skip_unload:
        # Requests queued when the model is unloaded are still answered; later ones are refused.
        pending, answers = [], []
        for k in range(16):
            x = grpcclient.InferInput(inp.name, list(inputs[k].shape), inp.datatype)
            x.set_data_from_numpy(inputs[k])
            pending.append(x)
        done = threading.Event()
        lock = threading.Lock()

        def answered(result, error):
            with lock:
                answers.append(error)
                if len(answers) == len(pending):
                    done.set()

        for x in pending:
            client.async_infer(args.model, [x], answered)
        time.sleep(0.005)  # accepted, and queued behind the batches in flight (the server's --fake-ms 5)
        client.unload_model(args.model)
        assert done.wait(30), f"{len(answers)} of {len(pending)} queued requests answered"
        unloaded_ok = sum(e is None for e in answers)
        assert unloaded_ok == len(pending), [str(e) for e in answers if e is not None]
        assert not client.is_model_ready(args.model)
        expect_code("NOT_FOUND", lambda: client.infer(args.model, [pending[0]]))
        client.load_model(args.model)
        assert client.is_model_ready(args.model)

    print(json.dumps({"model": args.model, "callers": CALLERS, "rows": sum(r.shape[0] for r in results),
                      "seconds": round(elapsed, 3), "worst_difference": worst, "answered_after_unload": unloaded_ok}))


if __name__ == "__main__":
    main()
