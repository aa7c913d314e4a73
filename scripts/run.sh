#!/usr/bin/env bash
# flashlab's main job: build, run experiments/default.toml (GPU rows where there is a CUDA device, the CPU part
# everywhere; what was skipped is recorded in the results), measure PyTorch's SDPA backends on the speed row when
# PyTorch and a GPU are present, and make the report (figures + report.md).
#   scripts/run.sh [SUITE.toml] [flashlab run options...]      e.g. scripts/run.sh experiments/smoke.toml
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(bash scripts/build.sh | tail -n 1)
suite=experiments/default.toml
if [[ $# -gt 0 && "$1" != -* ]]; then suite=$1; shift; fi
name=$(basename "$suite" .toml)
run_id=$(date -u +%Y%m%dT%H%M%SZ)
status=0
"$build/harness/flashlab" run "$suite" --out results --run-id "$run_id" "$@" || status=$?
if ((status > 1)); then exit "$status"; fi
dir=$(ls -d results/*/"$run_id" | head -n 1)
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  python3 experiments/peers/torch_sdpa.py "$dir" --variant standard --filter pass=fwd || echo "peers failed" >&2
fi
python3 -m reports "$dir"
echo "results: $dir (exit status of the sweep: $status)"
exit "$status"
