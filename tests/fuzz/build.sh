#!/usr/bin/env bash
# build.sh: builds every libFuzzer harness tests/fuzz/fuzz_*.c into tests/fuzz/out/NAME.
#
# The library sources of common/ snapshots/ loader/ worker/ gateway/ cli/ (without
# cli/main.c and the *_cuda.c files) are compiled once with coverage instrumentation into
# an archive that every harness links, so a new harness needs no edit here.
# Compiler: clang-14 (CC overrides); sanitizers: fuzzer, address, undefined.
set -euo pipefail
cd "$(dirname "$0")/../.."
CC=${CC:-clang-14}
OUT=tests/fuzz/out
OBJ=$OUT/obj
mkdir -p "$OBJ"
COMMON=(-g -O1 -std=c17 -D_GNU_SOURCE -I. -Iinclude -fno-omit-frame-pointer -fsanitize=address,undefined)
LIBS=(-lnng -lmsgpackc -lzstd -lsqlite3 -lyaml -ljansson -lxxhash -lsodium -lpthread -ldl -lm)

srcs=()
for d in common snapshots loader worker gateway cli; do
    [ -d "$d" ] || continue
    for f in "$d"/*.c; do
        [ -e "$f" ] || continue
        case "$f" in cli/main.c | *_cuda.c) continue ;; esac
        srcs+=("$f")
    done
done

# Compile the library objects in parallel; stop on the first error.
rm -f "$OBJ"/*.o
export CC OBJ
printf '%s\n' "${srcs[@]}" | xargs -P "$(nproc)" -I{} sh -c \
    'o="$OBJ/$(echo "{}" | tr / _ | sed "s/\.c$/.o/")"; exec "$CC" '"${COMMON[*]}"' -fsanitize=fuzzer-no-link -c "{}" -o "$o"'
rm -f "$OUT/libaicfn_fuzz.a"
ar rcs "$OUT/libaicfn_fuzz.a" "$OBJ"/*.o

built=0
for h in tests/fuzz/fuzz_*.c; do
    [ -e "$h" ] || continue
    name=$(basename "$h" .c)
    "$CC" "${COMMON[@]}" -fsanitize=fuzzer "$h" "$OUT/libaicfn_fuzz.a" "${LIBS[@]}" -o "$OUT/$name"
    echo "built $OUT/$name"
    built=$((built + 1))
done
echo "$built harnesses built"
