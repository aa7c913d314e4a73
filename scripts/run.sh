#!/usr/bin/env bash
# flashlab's main job (until the harness lands): builds, then benchmarks the Eigen reference:
# forward + backward of one head, N = 4096, d = 128, in double, against Eigen's own GEMM rate.
# Extra arguments go to the benchmark (see --help), e.g. --seqlen 32768 --head-dim 64.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(bash scripts/build.sh | tail -n 1)
exec "$build/reference/flashlab_reference_bench" "$@"
