"""End-to-end tests of `aicfn snapshot inspect`: what it reports about a packed snapshot,
and that it reads a snapshot whose data frames are not zstd without trusting them.
"""
import json
import struct

from conftest import pack_mlp, run_cli


def safetensors_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}


def inspect(snap):
    r = run_cli(["snapshot", "inspect", snap, "--json"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_inspect_reports_the_packed_tensors(tmp_path):
    weights, snap = pack_mlp(tmp_path)
    header = safetensors_header(weights)
    o = inspect(snap)
    assert o["format_version"] == 1
    assert o["file_bytes"] == snap.stat().st_size
    assert o["raw_bytes"] == sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
    assert o["frames"] >= 1 and 0 < o["data_bytes"] < o["file_bytes"]
    assert {t["name"] for t in o["tensors"]} == set(header)
    for t in o["tensors"]:
        assert t["dtype"] == "FP32" and t["shape"] == header[t["name"]]["shape"], t
        assert t["nbytes"] == 4 * (t["shape"][0] * (t["shape"][1] if len(t["shape"]) > 1 else 1))
        assert t["compressed_bytes"] > 0
    # Each data frame's bytes are shared out by raw range among the tensors it holds (the
    # alignment padding between tensors keeps its small share).
    shared = sum(t["compressed_bytes"] for t in o["tensors"])
    assert 0.9 * o["data_bytes"] <= shared <= o["data_bytes"] + len(o["tensors"])


def test_inspect_spreads_frames_that_are_not_current_zstd(tmp_path):
    # A data frame that starts with the v0.7 (legacy) zstd magic is not handed to libzstd's
    # legacy parsers: inspect still answers, sharing that frame's bytes out by raw size.
    _, snap = pack_mlp(tmp_path)
    before = inspect(snap)
    b = bytearray(snap.read_bytes())
    (manifest_frame,) = struct.unpack("<I", b[4:8])
    first = 8 + manifest_frame
    assert struct.unpack("<I", b[first:first + 4])[0] == 0xFD2FB528  # the zstd magic
    b[first:first + 4] = struct.pack("<I", 0xFD2FB527)
    snap.write_bytes(bytes(b))
    after = inspect(snap)
    assert after["data_bytes"] == before["data_bytes"]
    shared = sum(t["compressed_bytes"] for t in after["tensors"])
    assert 0.9 * after["data_bytes"] <= shared <= after["data_bytes"] + len(after["tensors"])
    assert all(t["compressed_bytes"] > 0 for t in after["tensors"])
    # Reading it (unpack, through the reader the loader uses) refuses the frame and names it.
    r = run_cli(["snapshot", "unpack", snap, "-o", tmp_path / "out.safetensors"])
    assert r.returncode != 0 and "legacy" in r.stderr and "frame 0:" in r.stderr, r.stderr
