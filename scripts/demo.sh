#!/usr/bin/env bash
# demo.sh: installs what is missing, builds, and shows aicfn working end to end:
#   1. a snapshot: pack the mlp example's weights and inspect the result;
#   2. a gateway with a small memory budget (one local worker of 40 MiB, started on
#      demand), four functions deployed (echo, mlp, and two generated 24 MiB models, so
#      not all fit), invocations in an order that forces evictions, the replies, the
#      resident models, and the `aicfn coldstarts` table read back from SQLite;
#   3. a clean stop (SIGTERM: the gateway drains its worker and flushes its records).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PREFIX=${AICFN_PREFIX:-zig-out}
if [ -z "${AICFN_DEMO_NO_BUILD:-}" ]; then   # set it to reuse an existing build in $AICFN_PREFIX
    ./scripts/bootstrap.sh
    .venv/bin/zig build -Doptimize=ReleaseSafe --prefix "$PREFIX"
fi
case "$PREFIX" in /*) ;; *) PREFIX=$ROOT/$PREFIX ;; esac
AICFN=$PREFIX/bin/aicfn
$AICFN version

WORK=$(mktemp -d /tmp/aicfn-demo-XXXXXX)
GW_PID=""
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -s "$WORK/gateway.log" ]; then   # a failed demo says why before its files go
        echo "demo failed (exit $rc); the gateway's log ends:" >&2
        tail -n 30 "$WORK/gateway.log" >&2
    fi
    if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. snapshot: pack examples/mlp/weights.safetensors"
$AICFN snapshot pack examples/mlp/weights.safetensors -o "$WORK/mlp.aicsnap"
$AICFN snapshot inspect "$WORK/mlp.aicsnap" | head -n 12

step "1b. snapshot round trip: a generated sample model (BF16, FP16, FP32, INT64, UINT8, scalar, empty)"
.venv/bin/python tests/tools/make_sample_model.py "$WORK/sample.safetensors"
$AICFN snapshot pack "$WORK/sample.safetensors" -o "$WORK/sample.aicsnap" --name sample
$AICFN snapshot inspect "$WORK/sample.aicsnap"
$AICFN snapshot verify "$WORK/sample.aicsnap"
zstd -q -t "$WORK/sample.aicsnap" && echo "zstd -t: the snapshot is a valid zstd stream"
$AICFN snapshot unpack "$WORK/sample.aicsnap" -o "$WORK/sample.back.safetensors"
.venv/bin/python - "$WORK/sample.safetensors" "$WORK/sample.back.safetensors" <<'PY'
import json, struct, sys
def tensors(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert a == b, "round trip differs"
print("round trip is bit-exact: %d tensors, %d bytes (names, dtypes, shapes and bytes equal)"
      % (len(a), sum(len(v[2]) for v in a.values())))
PY

step "2. gateway: one local worker at most, 40 MiB of model memory, idle timeout 1m"
export AICFN_GATEWAY=tcp://127.0.0.1:${AICFN_DEMO_PORT:-17170}
$AICFN gateway --listen "$AICFN_GATEWAY" --data "$WORK/data" --workers 0..1 --worker-memory 40MiB \
    --device auto --idle-timeout 1m --insecure-local >"$WORK/gateway.out" 2>"$WORK/gateway.log" &
GW_PID=$!
for _ in $(seq 1 100); do grep -q listening "$WORK/gateway.out" 2>/dev/null && break; sleep 0.05; done
grep -q listening "$WORK/gateway.out" || { echo "demo: the gateway did not start listening on $AICFN_GATEWAY" >&2; exit 1; }
cat "$WORK/gateway.out"

step "deploy echo, mlp and two generated 24 MiB models (big1, big2): not all fit in 40 MiB"
.venv/bin/python - "$WORK" "$ROOT/examples/echo/echo.c" <<'EOF'
import json, struct, sys
from pathlib import Path
import numpy as np
work, echo_c = Path(sys.argv[1]), sys.argv[2]
for i, name in enumerate(("big1", "big2")):
    d = work / name
    d.mkdir()
    w = np.random.default_rng(i).standard_normal(6 * 1024 * 1024).astype("<f4")  # 24 MiB
    h = json.dumps({"w": {"dtype": "F32", "shape": [6 * 1024 * 1024], "data_offsets": [0, w.nbytes]}}).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    (d / "w.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + w.tobytes())
    (d / "aicfn.yaml").write_text(f"name: {name}\nhandler: {echo_c}\nmodel: w.safetensors\nidempotent: true\n")
EOF
for f in examples/echo examples/mlp "$WORK/big1" "$WORK/big2"; do
    # Its progress lines are not shown; on a failure, its errors are.
    $AICFN deploy "$f" 2>"$WORK/deploy.err" || { cat "$WORK/deploy.err" >&2; exit 1; }
done
$AICFN ls

step "invoke: big1 (starts the worker), echo, mlp, big2 (evicts big1, the least recently used), mlp (warm), big1 (evicts big2), mlp again (answered by the gateway's response cache)"
X16='[[0.5,-1,2,0.25,1,0,-0.5,3,1,1,-2,0.1,0.2,0.3,0.4,0.5]]'
X16B='[[1,-1,2,0.25,1,0,-0.5,3,1,1,-2,0.1,0.2,0.3,0.4,0.5]]'
show() { printf '%-5s ' "$1"; shift; "$@" --json | .venv/bin/python -c "$SHOW_PY"; }
SHOW_PY='
import json, sys
r = json.load(sys.stdin)
outs = ", ".join("%s=%s" % (o["name"], o["data"][:4]) for o in r["outputs"])
how = "cached" if r.get("cached") else "COLD" if r["cold"] else "warm"
print("%-6s %8.2f ms   %s" % (how, r["timing"]["total_us"] / 1000, outs))'
show big1 $AICFN invoke big1 --input 'x=[1,2,3]'
show echo $AICFN invoke echo --input 'text="hello, aicfn"'
show mlp  $AICFN invoke mlp --input "x=$X16"
show big2 $AICFN invoke big2 --input 'x=[4,5,6]'
show mlp  $AICFN invoke mlp --input "x=$X16B"
show big1 $AICFN invoke big1 --input 'x=[7,8,9]'
show mlp  $AICFN invoke mlp --input "x=$X16B"

step "the worker's resident models"
$AICFN workers

step "cold starts, phase by phase (from aicfn.db)"
$AICFN coldstarts

step "3. stop: SIGTERM drains the worker and flushes the ledger"
kill -TERM "$GW_PID"
gw_rc=0
wait "$GW_PID" || gw_rc=$?
GW_PID=""
[ "$gw_rc" -eq 0 ] || { echo "demo: the gateway exited with status $gw_rc" >&2; exit 1; }
echo "gateway stopped cleanly"

step "usage per tenant and function (from the ledger): handler GPU-seconds, the GPU-seconds of the cold starts the calls made, and their cost at 2.50 per GPU-second"
$AICFN usage --data-dir "$WORK/data" --price-per-gpu-second 2.5
