#!/usr/bin/env bash
# test.sh: installs what is missing, builds every variant and runs the whole suite
# (tests/run_suite.py). The last line is `N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python tests/run_suite.py "$@"
