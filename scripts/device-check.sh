#!/usr/bin/env bash
# device-check.sh: the GPU checks, prepared here and run on a machine with an NVIDIA GPU
# that has the CUDA toolkit but not this project's build tools or Debian libraries.
#   ./scripts/device-check.sh prepare   (here) builds release with -Dcuda=on and copies the
#                                       binaries and the shared libraries they need
#                                       (glibc and the C++ runtime excepted) into .devcarry/
#   ./scripts/device-check.sh run       (there, with .devcarry/ beside the checkout)
# The run: the CUDA instances of the device and pipeline tests, the same under
# compute-sanitizer memcheck, the demo (--device auto picks the GPU), bench-load into the
# GPU and into host memory with 1..16 threads on a generated 1 GiB bf16 model, the mlp
# example's outputs on the GPU (CUDA kernels) against host memory (C path), and
# bench-invoke (mlp cold starts on the GPU). Each step has its own time limit.
#   ./scripts/device-check.sh prepare-minilm, run-minilm: bench-load on MiniLM there (below).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
D=$ROOT/.devcarry
B=$D/zig-out/bin

prepare() {
    set -e
    ./scripts/bootstrap.sh
    .venv/bin/zig build install handlers tests benches -Doptimize=ReleaseSafe -Dcuda=on
    grep -qx '/.devcarry/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null ||
        echo '/.devcarry/' >>"$(git rev-parse --git-path info/exclude)"
    rm -rf "$D"
    mkdir -p "$D/lib" "$D/bin" "$B/tests/unit" "$D/zig-out/lib"
    cp zig-out/bin/aicfn zig-out/bin/bench-load zig-out/bin/bench-invoke "$B/"
    cp zig-out/bin/tests/unit/test_device zig-out/bin/tests/unit/test_pipeline "$B/tests/unit/"
    cp -r zig-out/lib/handlers "$D/zig-out/lib/"
    cp "$(command -v zstd)" "$D/bin/"
    # The demo's Python needs numpy, which the GPU machine's python3 (3.12) may lack: carry
    # the wheel (a zip), unpacked there.
    mkdir -p "$D/wheels"
    .venv/bin/pip download -q --disable-pip-version-check numpy==2.2.1 --only-binary=:all: \
        --python-version 3.12 --platform manylinux2014_x86_64 --implementation cp --no-deps -d "$D/wheels"
    ldd "$B"/aicfn "$B"/bench-* "$B"/tests/unit/* "$D"/zig-out/lib/handlers/*.so "$D/bin/zstd" |
        awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
        grep -v -e '/libc\.so' -e '/libm\.so' -e '/libpthread' -e '/libdl\.so' -e '/librt\.so' \
            -e '/libgcc_s' -e '/libstdc++' | xargs -I{} cp -L {} "$D/lib/"
    du -sh "$D"
}

section() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

# Invokes examples/mlp with a batch of 4 rows through a gateway whose workers use device
# $1; prints the reply (JSON) on stdout.
mlp_reply() {
    local dev=$1 dir port pid rc=0
    dir=$(mktemp -d /tmp/device-check-mlp-XXXXXX)
    port=$((17180 + RANDOM % 500))
    "$B/aicfn" gateway --listen "tcp://127.0.0.1:$port" --data "$dir" --workers 0..1 --device "$dev" \
        --insecure-local >"$dir/out" 2>"$dir/log" &
    pid=$!
    for _ in $(seq 1 100); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.05; done
    local x='[[0.5,-1,2,0.25,1,0,-0.5,3,1,1,-2,0.1,0.2,0.3,0.4,0.5],[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],'
    x+='[-1,-2,-3,-4,-5,-6,-7,-8,-9,-10,-11,-12,-13,-14,-15,-16],[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0.001]]'
    timeout 90 "$B/aicfn" deploy examples/mlp --gateway "tcp://127.0.0.1:$port" >/dev/null 2>>"$dir/log" &&
        timeout 60 "$B/aicfn" invoke mlp --gateway "tcp://127.0.0.1:$port" --input "x=$x" --json || rc=1
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    [ $rc -eq 0 ] || { echo "mlp on $dev failed; gateway log:" >&2; tail -20 "$dir/log" >&2; }
    grep -h "CUDA path\|device " "$dir/log" | head -5 >&2
    rm -rf "$dir"
    return $rc
}

mlp_parity() {
    local host cuda
    host=$(mlp_reply host) && cuda=$(mlp_reply cuda) || return 1
    .venv/bin/python - "$host" "$cuda" <<'PY'
import json, sys
h, c = (json.loads(a) for a in sys.argv[1:3])
diff = 0.0
for oh, oc in zip(h["outputs"], c["outputs"]):
    assert oh["name"] == oc["name"] and oh["shape"] == oc["shape"], (oh, oc)
    for a, b in zip(oh["data"], oc["data"]):
        diff = max(diff, abs(float(a) - float(b)) / max(1.0, abs(float(a))))
print("mlp outputs, CUDA against C: %d outputs, max difference %.3g (relative above 1) (%s)"
      % (len(h["outputs"]), diff, "ok" if diff <= 1e-4 else "MISMATCH"))
sys.exit(0 if diff <= 1e-4 else 1)
PY
}

run() {
    [ -x "$B/aicfn" ] || { echo "device-check: run 'prepare' first (no $B/aicfn)" >&2; exit 2; }
    export LD_LIBRARY_PATH=$D/lib PATH=$D/bin:$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
    export CMOCKA_MESSAGE_OUTPUT=TAP
    # The demo runs .venv/bin/python and needs numpy: without a venv (the GPU machine has
    # none), point it at a python3 that has numpy.
    local py
    if ! .venv/bin/python -c 'import numpy' 2>/dev/null; then
        for py in python3 /opt/torch/.venv/bin/python3 /usr/local/bin/python3 /usr/bin/python3; do
            command -v "$py" >/dev/null && "$py" -c 'import numpy' 2>/dev/null && break
        done
        if ! "$py" -c 'import numpy' 2>/dev/null; then
            py=python3
            rm -rf /tmp/device-check-py && mkdir -p /tmp/device-check-py
            "$py" -m zipfile -e "$D"/wheels/numpy-*-cp312-*.whl /tmp/device-check-py/
            export PYTHONPATH=/tmp/device-check-py
        fi
        mkdir -p .venv/bin && ln -sf "$(command -v "$py")" .venv/bin/python
    fi
    section environment
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    nproc; head -2 /etc/os-release; command -v cc nvcc zstd compute-sanitizer; .venv/bin/python -V
    section test_device; timeout 60 "$B/tests/unit/test_device" 2>&1
    section test_pipeline; timeout 90 "$B/tests/unit/test_pipeline" 2>&1
    section "compute-sanitizer memcheck"
    local t san=/tmp/device-check-memcheck.log
    for t in test_device test_pipeline; do
        timeout 90 compute-sanitizer --tool memcheck --leak-check full "$B/tests/unit/$t" >"$san" 2>&1
        grep -v '^ok ' "$san"
        # dev_alloc_too_much_is_capacity asks for more than the device has, on purpose: the
        # out-of-memory it provokes is reported as an API error (and read back once more by
        # cudaGetLastError). Anything else is a finding.
        printf 'memcheck %s: %s reports, %s of them the deliberate cudaErrorMemoryAllocation\n' "$t" \
            "$(grep -c '^========= \(Program hit\|Invalid\|Leaked\)' "$san")" \
            "$(grep -c '^========= Program hit cudaErrorMemoryAllocation' "$san")"
    done
    section demo
    AICFN_PREFIX=$D/zig-out AICFN_DEMO_NO_BUILD=1 AICFN_DEMO_PORT=17171 timeout 150 ./scripts/demo.sh 2>&1
    # bench-load writes its data under ./bench/.cache: a directory without bench/setup_data.sh
    # keeps it from trying to download MiniLM (the machine may have no network).
    mkdir -p /tmp/device-check/bench
    section "bench-load cuda"
    (cd /tmp/device-check && timeout 150 "$B/bench-load" --device cuda --threads 1,2,4,8,16 --reps 3 2>&1)
    section "bench-load host"
    (cd /tmp/device-check && timeout 60 "$B/bench-load" --device host --threads 1,2,8,16 --reps 3 2>&1)
    section "mlp: CUDA kernels against the C path"; mlp_parity 2>&1
    section bench-invoke; timeout 100 "$B/bench-invoke" --cold 5 --seconds 1 2>&1
    section done
}

# MiniLM for bench-load there: the GPU machine cannot download it, and the files are
# over one call's carry limit together, so they travel zstd-compressed in a tar split in
# two, .devmini1 and .devmini2, carried by two calls in a row (the first call's folder
# stays on the warm machine), after a `run` (which left .devcarry there).
prepare_minilm() {
    set -e
    local m t
    for m in minilm minilm-bf16; do
        [ -f "bench/.cache/$m/model.safetensors" ] || { echo "run bench/setup_data.sh first" >&2; exit 2; }
    done
    grep -qxF '/.devmini[12]/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null ||
        echo '/.devmini[12]/' >>"$(git rev-parse --git-path info/exclude)"
    t=$(mktemp -d /tmp/device-check-minilm-XXXXXX)
    mkdir -p "$t/minilm" "$t/minilm-bf16"
    for m in minilm minilm-bf16; do
        zstd -q -19 -T0 "bench/.cache/$m/model.safetensors" -o "$t/$m/model.safetensors.zst"
    done
    rm -rf .devmini1 .devmini2 && mkdir -p .devmini1 .devmini2
    tar -C "$t" -cf - minilm minilm-bf16 | split -b 56M -d - "$t/part."
    mv "$t/part.00" .devmini1/ && mv "$t"/part.0[1-9] .devmini2/
    rm -rf "$t"
    du -sh .devmini1 .devmini2
}

run_minilm() {
    [ -x "$B/bench-load" ] && [ -d .devmini1 ] && [ -d .devmini2 ] ||
        { echo "device-check: needs .devcarry, .devmini1 and .devmini2 here" >&2; exit 2; }
    export LD_LIBRARY_PATH=$D/lib PATH=$D/bin:$PATH
    local c=/tmp/device-check/bench/.cache m
    mkdir -p "$c"
    cat .devmini1/part.* .devmini2/part.* | tar -C "$c" -xf -
    for m in minilm minilm-bf16; do
        zstd -q -d -f --rm "$c/$m/model.safetensors.zst" -o "$c/$m/model.safetensors"
    done
    section "bench-load host, MiniLM"
    (cd /tmp/device-check && timeout 120 "$B/bench-load" --no-gen --device host --threads 1,2,4,8,16 --reps 5 2>&1)
    section "bench-load cuda, MiniLM"
    (cd /tmp/device-check && timeout 120 "$B/bench-load" --no-gen --device cuda --threads 1,2,4,8,16 --reps 5 2>&1)
    section done
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
prepare-minilm) prepare_minilm ;;
run-minilm) run_minilm ;;
*) echo "usage: $0 prepare|run|prepare-minilm|run-minilm" >&2; exit 2 ;;
esac
