"""protocol_client.py: a small aicfn client written only from docs/protocol.md (pynng +
msgpack + numpy). End-to-end tests import it to invoke functions on a gateway or a worker
the way a third-party client would.

    from protocol_client import Client
    with Client("tcp://127.0.0.1:7070", key=KEY) as c:
        rep = c.invoke("mlp", {"x": np.ones((1, 4), np.float32)})
        rep.outputs["y"], rep.cold, rep.timing

Run as a script for a smoke test: python protocol_client.py URL [FN] invokes FN (default
"echo") with one FP32 and one BYTES input and checks that the outputs echo the inputs.
"""
import itertools
import struct
import sys
import threading

import msgpack
import numpy as np
import pynng

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20
SP_HEADER_ROOM = 64  # section 1: NNG's REQ/REP header counts against the receive limit

# docs/protocol.md section 3: OIP v2 dtype names -> little-endian numpy dtypes.
DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# BF16 and FP8 have no numpy dtype: they travel as raw bytes (RawTensor).

# docs/protocol.md section 6.
ERROR_NAMES = {
    0: "AICFN_OK", 1: "AICFN_E_INVALID", 2: "AICFN_E_NOMEM", 3: "AICFN_E_IO", 4: "AICFN_E_CORRUPT",
    5: "AICFN_E_UNSUPPORTED", 6: "AICFN_E_NOT_FOUND", 7: "AICFN_E_TOO_LARGE", 8: "AICFN_E_CAPACITY",
    9: "AICFN_E_TIMEOUT", 10: "AICFN_E_UNAVAILABLE", 11: "AICFN_E_OVERLOADED", 12: "AICFN_E_WORKER_LOST",
    13: "AICFN_E_UNAUTHENTICATED", 14: "AICFN_E_FORBIDDEN", 15: "AICFN_E_QUOTA", 16: "AICFN_E_HANDLER",
    17: "AICFN_E_ABI", 18: "AICFN_E_DEVICE", 19: "AICFN_E_PROTOCOL", 20: "AICFN_E_EXISTS", 21: "AICFN_E_DB",
    22: "AICFN_E_INTERNAL", 23: "AICFN_E_CANCELED",
}
ERROR_CODES = {v: k for k, v in ERROR_NAMES.items()}
HTTP_STATUS = {0: 200, 1: 400, 2: 500, 3: 500, 4: 500, 5: 400, 6: 404, 7: 413, 8: 507, 9: 504, 10: 503,
               11: 429, 12: 502, 13: 401, 14: 403, 15: 429, 16: 500, 17: 500, 18: 500, 19: 400, 20: 409,
               21: 500, 22: 500, 23: 503}


class AicfnError(Exception):
    """An error reply: .code (int), .name ("AICFN_E_..."), .message, .reply (the whole map)."""

    def __init__(self, code, name, message, reply=None):
        super().__init__(f"{name} ({code}): {message}")
        self.code, self.name, self.message, self.reply = code, name, message, reply


class RawTensor:
    """A tensor kept as its wire form (BF16, FP8, or anything without a numpy dtype)."""

    def __init__(self, dtype, shape, data):
        self.dtype, self.shape, self.data = dtype, list(shape), bytes(data)

    def __repr__(self):
        return f"RawTensor({self.dtype}, {self.shape}, {len(self.data)} bytes)"


def encode_bytes_elements(items):
    """BYTES data: each element a 4-byte little-endian length then its bytes."""
    out = bytearray()
    for x in items:
        if isinstance(x, str):
            x = x.encode("utf-8")
        out += struct.pack("<I", len(x)) + bytes(x)
    return bytes(out)


def decode_bytes_elements(data, count):
    items, pos = [], 0
    for _ in range(count):
        if len(data) - pos < 4:
            raise ValueError("BYTES data truncated")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n > len(data) - pos:
            raise ValueError("BYTES element runs past the data")
        items.append(bytes(data[pos:pos + n]))
        pos += n
    if pos != len(data):
        raise ValueError("BYTES data has trailing bytes")
    return items


def encode_tensor(name, value):
    """A tensor map from a numpy array, a list of str/bytes (BYTES, 1-D), or a RawTensor."""
    if isinstance(value, RawTensor):
        return {"name": name, "dtype": value.dtype, "shape": value.shape, "data": value.data}
    if isinstance(value, (list, tuple)) and all(isinstance(x, (str, bytes, bytearray)) for x in value):
        return {"name": name, "dtype": "BYTES", "shape": [len(value)], "data": encode_bytes_elements(value)}
    arr = np.asarray(value)
    if arr.dtype.kind in "SUO":
        flat = [x if isinstance(x, (bytes, str)) else str(x) for x in arr.reshape(-1).tolist()]
        return {"name": name, "dtype": "BYTES", "shape": list(arr.shape), "data": encode_bytes_elements(flat)}
    for dname, dt in DTYPES.items():
        if arr.dtype.kind == dt.kind and arr.dtype.itemsize == dt.itemsize:
            data = np.ascontiguousarray(arr, dtype=dt).tobytes()
            return {"name": name, "dtype": dname, "shape": list(arr.shape), "data": data}
    raise TypeError(f"tensor {name!r}: no wire dtype for numpy {arr.dtype}")


def decode_tensor(t):
    """(name, value): a numpy array, a numpy object array of bytes (BYTES), or a RawTensor."""
    name, dtype, shape, data = t["name"], t["dtype"], list(t["shape"]), t["data"]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dtype == "BYTES":
        items = decode_bytes_elements(data, count)
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return name, arr.reshape(shape)
    if dtype not in DTYPES:
        return name, RawTensor(dtype, shape, data)
    dt = DTYPES[dtype]
    if len(data) != count * dt.itemsize:
        raise ValueError(f"tensor {name!r}: {len(data)} bytes for {dtype} shape {shape}")
    return name, np.frombuffer(data, dtype=dt).reshape(shape)


class Reply:
    """A successful invoke reply: outputs (dict name -> value), cold, timing (µs), batch,
    coldstart (the `cs` map or None), st (the worker summary or None), raw (the map)."""

    def __init__(self, m):
        self.raw = m
        self.id = m["id"]
        self.outputs = dict(decode_tensor(t) for t in m.get("outputs") or [])
        self.cold = bool(m.get("cold", False))
        self.timing = dict(m.get("timing") or {})
        self.batch = m.get("batch")
        self.coldstart = m.get("cs")
        self.st = m.get("st")


def check_reply(m, want_id):
    """Raises AicfnError for error replies and ValueError for malformed ones."""
    if not isinstance(m, dict):
        raise ValueError("reply is not a map")
    if m.get("v", 0) > PROTOCOL_VERSION:
        raise ValueError(f"reply version {m.get('v')} is newer than {PROTOCOL_VERSION}")
    if m.get("id") != want_id:
        raise ValueError(f"reply id {m.get('id')} does not match request id {want_id}")
    if not m.get("ok", False):
        e = m.get("error") or {}
        code = e.get("code")
        if code is None:
            code = ERROR_CODES.get(e.get("name"), 22)
        raise AicfnError(code, ERROR_NAMES.get(code, e.get("name", "AICFN_E_UNKNOWN")), e.get("message", ""), m)
    return m


class Client:
    """One REQ socket; thread-safe (a lock serializes calls on the socket)."""

    _ids = itertools.count(1)

    def __init__(self, address, key=None, timeout_ms=35_000):
        self.key = key
        self.timeout_ms = timeout_ms
        self._lock = threading.Lock()
        self._sock = pynng.Req0(resend_time=-1, recv_max_size=MAX_MESSAGE_BYTES + SP_HEADER_ROOM,
                                recv_timeout=timeout_ms, send_timeout=timeout_ms)
        self._sock.dial(address, block=True)

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, msg, timeout_ms=None):
        """Sends one message map (v and id filled in when absent) and returns the reply map,
        raising AicfnError for error replies."""
        msg = dict(msg)
        msg.setdefault("v", PROTOCOL_VERSION)
        msg.setdefault("id", next(self._ids))
        with self._lock:
            if timeout_ms is not None:
                self._sock.recv_timeout = timeout_ms
            try:
                self._sock.send(msgpack.packb(msg, use_bin_type=True))
                raw = self._sock.recv()
            finally:
                if timeout_ms is not None:
                    self._sock.recv_timeout = self.timeout_ms
        return check_reply(msgpack.unpackb(raw, raw=False, strict_map_key=False), msg["id"])

    def invoke(self, fn, inputs=None, ver=None, params=None, deadline_ms=None, key=None, timeout_ms=None):
        """Invokes fn with inputs (dict name -> numpy array / list of str|bytes / RawTensor).
        Returns a Reply; raises AicfnError on an error reply."""
        msg = {"t": "invoke", "fn": fn, "inputs": [encode_tensor(n, v) for n, v in (inputs or {}).items()]}
        if ver:
            msg["ver"] = int(ver)
        if params is not None:
            msg["params"] = dict(params)
        if deadline_ms:
            msg["deadline_ms"] = int(deadline_ms)
        k = key if key is not None else self.key
        if k is not None:
            msg["key"] = k
        if timeout_ms is None and deadline_ms:
            timeout_ms = int(deadline_ms) + 5000
        return Reply(self.call(msg, timeout_ms=timeout_ms))

    def status(self):
        """A worker's status (docs/protocol.md section 5): the `w` map."""
        return self.call({"t": "status"}).get("w")


def _smoke(address, fn="echo"):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with Client(address, timeout_ms=10_000) as c:
        rep = c.invoke(fn, {"x": x, "s": ["hi", ""]}, params={"p": 1})
        assert np.array_equal(rep.outputs["x"], x), rep.outputs
        assert list(rep.outputs["s"]) == [b"hi", b""], rep.outputs
        try:
            c.call({"t": "invoke", "fn": fn, "inputs": [{"name": "x", "dtype": "FP32", "shape": [2], "data": b"123"}]})
        except AicfnError as e:
            assert e.code == 19 and e.name == "AICFN_E_PROTOCOL" and "'x'" in e.message, e
        else:
            raise AssertionError("a bad tensor was accepted")
    print("protocol_client smoke OK")


if __name__ == "__main__":
    _smoke(*sys.argv[1:3])
