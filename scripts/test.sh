#!/usr/bin/env bash
# Builds flashlab and runs every test (CTest). GPU tests report "skipped" where there is no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
build=$(bash scripts/build.sh | tail -n 1)
preset=$(basename "$build")
ctest --preset "$preset" "$@"
