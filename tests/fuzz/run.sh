#!/usr/bin/env bash
# run.sh NAME SECONDS: runs the libFuzzer harness tests/fuzz/out/NAME (see build.sh) for
# SECONDS on its corpus, tests/fuzz/out/corpus-NAME, seeded from tests/fuzz/seeds/NAME/.
# Exits non-zero when the harness finds a crash, a leak or a timeout; the input that
# caused it is kept under tests/fuzz/out/artifacts-NAME/.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -ne 2 ]; then
    echo "usage: tests/fuzz/run.sh NAME SECONDS" >&2
    exit 2
fi
name=$1
secs=$2
OUT=tests/fuzz/out
bin=$OUT/$name
if [ ! -x "$bin" ]; then
    echo "run.sh: $bin is missing; run tests/fuzz/build.sh first" >&2
    exit 2
fi
corpus=$OUT/corpus-$name
artifacts=$OUT/artifacts-$name
mkdir -p "$corpus" "$artifacts"
if [ -d "tests/fuzz/seeds/$name" ]; then
    cp -n "tests/fuzz/seeds/$name"/* "$corpus"/ 2>/dev/null || true
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus"
