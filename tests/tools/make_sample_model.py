#!/usr/bin/env python3
"""make_sample_model.py: writes a small safetensors model made of weight-like tensors.

Usage: make_sample_model.py OUT.safetensors [--scale N] [--seed S]

The tensors mix the dtypes a snapshot must handle (BF16, FP16, FP32 weights drawn from a
normal distribution, INT64 ids, UINT8 masks, a scalar and an empty tensor). Used by
scripts/demo.sh and to make fuzz seeds; the unit tests make their own files in C.
Writes the safetensors format directly (8-byte LE header length, JSON header, data)."""
import argparse
import json
import struct

import numpy as np


def to_bf16(a):
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def sample(scale, seed):
    rng = np.random.default_rng(seed)
    d = 64 * scale
    t = {}
    t["embed.weight"] = ("BF16", (4 * d, d), to_bf16(rng.normal(0, 0.02, (4 * d, d))).tobytes())
    t["attn.qkv.weight"] = ("FP16", (3 * d, d), rng.normal(0, 0.05, (3 * d, d)).astype(np.float16).tobytes())
    t["mlp.up.weight"] = ("FP32", (2 * d, d), rng.normal(0, 0.05, (2 * d, d)).astype(np.float32).tobytes())
    t["mlp.up.bias"] = ("FP32", (2 * d,), np.zeros(2 * d, np.float32).tobytes())
    t["norm.weight"] = ("F32", (d,), np.ones(d, np.float32).tobytes())
    t["position_ids"] = ("I64", (1, 128), np.arange(128, dtype=np.int64).reshape(1, 128).tobytes())
    t["mask"] = ("U8", (37,), (rng.random(37) > 0.5).astype(np.uint8).tobytes())
    t["temperature"] = ("F32", (), np.array(0.7, np.float32).tobytes())
    t["unused"] = ("I32", (0, 4), b"")
    # safetensors names: FP16 -> F16, FP32 -> F32
    return {k: ({"FP16": "F16", "FP32": "F32"}.get(v[0], v[0]), v[1], v[2]) for k, v in t.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--scale", type=int, default=4, help="width multiplier (4 = about 1.5 MB)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    write_safetensors(a.out, sample(a.scale, a.seed), {"format": "pt", "made_by": "aicfn sample"})


if __name__ == "__main__":
    main()
