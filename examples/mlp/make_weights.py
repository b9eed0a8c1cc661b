#!/usr/bin/env python3
"""make_weights.py: writes the mlp example's deterministic weights as safetensors.

A two-layer perceptron classifier: logits = relu(x @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias,
with x of shape [batch, 16], 64 hidden units and 10 classes (PyTorch's Linear layout).
The weights come from numpy's PCG64 generator with a fixed seed, so every run writes the
same bytes. safetensors is written by hand (8-byte LE header length, JSON header, data)
so nothing beyond numpy is needed.

usage: make_weights.py [OUT]   (default: weights.safetensors beside this script)
"""
import json
import os
import struct
import sys

import numpy as np

D_IN, HIDDEN, CLASSES = 16, 64, 10
SEED = 20240601


def make_weights():
    rng = np.random.Generator(np.random.PCG64(SEED))
    return {
        "fc1.weight": (rng.standard_normal((HIDDEN, D_IN)) / np.sqrt(D_IN)).astype("<f4"),
        "fc1.bias": (rng.standard_normal(HIDDEN) * 0.1).astype("<f4"),
        "fc2.weight": (rng.standard_normal((CLASSES, HIDDEN)) / np.sqrt(HIDDEN)).astype("<f4"),
        "fc2.bias": (rng.standard_normal(CLASSES) * 0.1).astype("<f4"),
    }


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt", "model": "mlp", "seed": str(SEED)}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                              "weights.safetensors")
    write_safetensors(out, make_weights())
    print(out)


if __name__ == "__main__":
    main()
