#!/usr/bin/env bash
# bootstrap.sh: installs what a fresh machine lacks to build and test aicfn, and
# nothing else. Idempotent: a second run checks and returns in seconds.
#   - Debian packages (the -dev libraries, gcc (aicfn deploy builds .c handlers with cc),
#     zstd, sanitizer and fuzzer runtimes, promtool); as root, or through sudo
#   - the pinned Zig (PyPI's ziglang) and the Python test tools, in .venv/ (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."

ZIG_VERSION=0.17.1   # keep in step with build.zig.zon's minimum_zig_version
APT_PACKAGES=(
  libnng-dev libmsgpack-dev libzstd-dev libsqlite3-dev libyaml-dev libjansson-dev
  libxxhash-dev libsodium-dev libcmocka-dev libmicrohttpd-dev zstd sqlite3
  libasan8 clang-14 libclang-rt-14-dev python3-venv prometheus gcc
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "bootstrap: run it as root (or install sudo) to install them" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  # env inside sudo: sudo's env_reset would drop a DEBIAN_FRONTEND set before it
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.aicfn-requirements
want="zig=$ZIG_VERSION $(sha256sum tests/requirements.txt | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing ziglang==$ZIG_VERSION and the Python test tools into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "ziglang==$ZIG_VERSION" -r tests/requirements.txt
  ln -sf "$(.venv/bin/python -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')" .venv/bin/zig
  echo "$want" > "$stamp"
fi
[ "$(.venv/bin/zig version)" = "$ZIG_VERSION" ] || { echo "bootstrap: .venv/bin/zig is not $ZIG_VERSION" >&2; exit 1; }
