"""test_protocol_client.py: offline checks of tests/e2e/protocol_client.py and of
docs/protocol.md against the C sources: tensor and BYTES encoding, error replies, and the
error table (codes, names, HTTP statuses) in the docs, the client and common/error.c.
The live round trip against the C codec runs in tests/unit/test_rpc.c
(python_protocol_client_interop)."""
import os
import re
import struct
import sys

import msgpack
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import protocol_client as pc  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_fixed_dtypes_round_trip():
    for arr in [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False]),
                np.arange(4, dtype=np.int64), np.zeros((0, 3), np.float16), np.uint16(7).reshape(())]:
        t = pc.encode_tensor("x", arr)
        assert len(t["data"]) == arr.size * arr.dtype.itemsize
        name, back = pc.decode_tensor(msgpack.unpackb(msgpack.packb(t)))
        assert name == "x" and back.dtype == arr.dtype and np.array_equal(back, arr)


def test_bytes_encoding_matches_the_docs_example():
    t = pc.encode_tensor("s", ["hi", b""])
    assert t["dtype"] == "BYTES" and t["shape"] == [2]
    assert t["data"] == bytes.fromhex("02000000 6869 00000000".replace(" ", ""))
    _, back = pc.decode_tensor(t)
    assert list(back) == [b"hi", b""]
    with pytest.raises(ValueError):
        pc.decode_bytes_elements(struct.pack("<I", 9) + b"a", 1)
    with pytest.raises(ValueError):
        pc.decode_bytes_elements(t["data"] + b"x", 2)


def test_raw_tensor_for_bf16():
    t = pc.encode_tensor("w", pc.RawTensor("BF16", [2], b"\x80\x3f\x00\x40"))
    _, back = pc.decode_tensor(t)
    assert isinstance(back, pc.RawTensor) and back.dtype == "BF16" and back.data == t["data"]


def test_error_reply_raises_with_code_and_name():
    m = {"v": 1, "id": 5, "ok": False, "error": {"code": 6, "name": "AICFN_E_NOT_FOUND", "message": "nope"}}
    with pytest.raises(pc.AicfnError) as ei:
        pc.check_reply(m, 5)
    assert ei.value.code == 6 and ei.value.name == "AICFN_E_NOT_FOUND" and ei.value.message == "nope"
    m = {"v": 1, "id": 5, "ok": False, "error": {"name": "AICFN_E_QUOTA"}}
    with pytest.raises(pc.AicfnError) as ei:
        pc.check_reply(m, 5)
    assert ei.value.code == 15
    with pytest.raises(ValueError):
        pc.check_reply({"v": 1, "id": 4, "ok": True, "outputs": []}, 5)


def test_error_table_agrees_with_docs_and_c():
    docs = open(os.path.join(ROOT, "docs", "protocol.md")).read()
    rows = re.findall(r"^\| (\d+) \| `(AICFN_[A-Z_]+)` \| (\d{3}) \|", docs, re.M)
    assert len(rows) == len(pc.ERROR_NAMES)
    c = open(os.path.join(ROOT, "common", "error.c")).read()
    ctab = dict(re.findall(r'\[(AICFN_[A-Z_]+)\] = \{"AICFN_[A-Z_]+", "[^"]*", (\d{3})\}', c))
    hdr = open(os.path.join(ROOT, "include", "aicfn.h")).read()
    nums = {n: int(v) for n, v in re.findall(r"^\s+(AICFN_(?:OK|E_[A-Z_]+)) = (\d+),", hdr, re.M)}
    for code, name, http in rows:
        code, http = int(code), int(http)
        assert pc.ERROR_NAMES[code] == name
        assert pc.HTTP_STATUS[code] == http
        assert nums[name] == code, name
        assert int(ctab[name]) == http, name
