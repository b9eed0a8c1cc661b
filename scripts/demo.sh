#!/usr/bin/env bash
# demo.sh: installs what is missing, builds, and shows aicfn working end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/zig build -Doptimize=ReleaseSafe
./zig-out/bin/aicfn version
