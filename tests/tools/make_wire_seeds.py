#!/usr/bin/env python3
"""make_wire_seeds.py: writes libFuzzer seed corpora for tests/fuzz/fuzz_request.c and
tests/fuzz/fuzz_reply.c: a few valid wire messages (docs/protocol.md), encoded with the
msgpack package, under tests/fuzz/seeds/fuzz_request/ and tests/fuzz/seeds/fuzz_reply/.

Usage: .venv/bin/python tests/tools/make_wire_seeds.py [--out tests/fuzz/seeds]
"""
import argparse
import os
import struct

import msgpack


def tensor(name, dtype, shape, data):
    return {"name": name, "dtype": dtype, "shape": list(shape), "data": bytes(data)}


def bytes_elems(items):
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def requests():
    fp32 = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    yield "minimal", {"v": 1, "t": "invoke", "id": 1, "fn": "echo", "inputs": []}
    yield "fp32", {"v": 1, "t": "invoke", "id": 7, "fn": "mlp", "ver": 2, "key": "k_test",
                   "deadline_ms": 1500, "inputs": [tensor("x", "FP32", (2, 3), fp32)]}
    yield "bytes_params", {"v": 1, "t": "invoke", "id": 2**40, "fn": "tok",
                           "inputs": [tensor("text", "BYTES", (2,), bytes_elems([b"hello", b""]))],
                           "params": {"temperature": 0.5, "top_k": 3, "stop": ["\n"]}}
    yield "spec", {"v": 1, "t": "invoke", "id": 3, "fn": "mlp", "ver": 1, "tenant": "acme",
                   "inputs": [tensor("x", "INT64", (1, 2), struct.pack("<2q", -1, 5)),
                              tensor("m", "BOOL", (2,), b"\x01\x00")],
                   "spec": {"handler": "/d/fn/mlp/1/mlp.so", "snapshot": "/d/fn/mlp/1/model.aicfn",
                            "model": "abc123", "model_bytes": 4096, "max_batch": 8,
                            "max_delay_us": 2000, "timeout_ms": 30000, "idempotent": True}}
    yield "status", {"v": 1, "t": "status", "id": 9}
    yield "all_dtypes", {"v": 1, "t": "invoke", "id": 4, "fn": "f", "inputs": [
        tensor("a", "UINT8", (1,), b"\x01"), tensor("b", "UINT16", (1,), b"\x01\x00"),
        tensor("c", "UINT32", (1,), b"\0" * 4), tensor("d", "UINT64", (1,), b"\0" * 8),
        tensor("e", "INT8", (1,), b"\x01"), tensor("f", "INT16", (1,), b"\0" * 2),
        tensor("g", "INT32", (1,), b"\0" * 4), tensor("h", "FP16", (1,), b"\0" * 2),
        tensor("i", "BF16", (1,), b"\0" * 2), tensor("j", "FP64", (0, 3), b"")]}


def replies():
    fp32 = struct.pack("<2f", 0.25, -1)
    st = {"budget": 1 << 30, "used": 4096, "free": (1 << 30) - 4096, "queued": 1, "inflight": 2,
          "draining": False,
          "models": [{"model": "abc123", "fn": "mlp", "ver": 1, "state": "READY", "bytes": 4096,
                      "idle_ms": 12, "refs": 1},
                     {"model": "def456", "fn": "big", "ver": 3, "state": "LOADING", "bytes": 0,
                      "idle_ms": 0, "refs": 0}]}
    yield "ok_warm", {"v": 1, "id": 7, "ok": True, "outputs": [tensor("y", "FP32", (1, 2), fp32)],
                      "cold": False, "timing": {"queue": 5, "exec": 40, "total": 60}, "batch": 1, "st": st}
    yield "ok_cold", {"v": 1, "id": 8, "ok": True, "outputs": [], "cold": True,
                      "timing": {"queue": 5, "load": 9000, "exec": 40, "total": 9100, "read": 100,
                                 "decompress": 3000, "filter": 200, "copy": 500, "init": 20},
                      "cs": {"cbytes": 1000, "rbytes": 4096, "evicted": ["old1"]}, "st": st}
    yield "error", {"v": 1, "id": 9, "ok": False,
                    "error": {"code": 6, "name": "AICFN_E_NOT_FOUND", "message": "function 'x' not found"}}
    yield "status_reply", {"v": 1, "id": 10, "ok": True, "w": {
        "worker": "w1", "device": "host", "host": True, "uptime_ms": 5000, "st": st,
        "queues": [{"fn": "mlp", "ver": 1, "queued": 1, "inflight": 1}],
        "counters": {"invocations": 10, "errors": 1, "cold_starts": 2, "evictions": 0, "batches": 9}}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fuzz", "seeds"))
    a = ap.parse_args()
    for corpus, gen in (("fuzz_request", requests), ("fuzz_reply", replies)):
        d = os.path.join(a.out, corpus)
        os.makedirs(d, exist_ok=True)
        for name, msg in gen():
            with open(os.path.join(d, name + ".msgpack"), "wb") as f:
                f.write(msgpack.packb(msg, use_bin_type=True))
    print("seeds written under", os.path.normpath(a.out))


if __name__ == "__main__":
    main()
