#!/usr/bin/env bash
# flashlab's main job: build, run a suite (experiments/default.toml by default: GPU rows where there is a CUDA device,
# the CPU part everywhere; what was skipped is recorded in the results), measure PyTorch's SDPA backends on the
# speed row when PyTorch and a GPU are present, and make the report (figures + report.md).
#   scripts/run.sh [SUITE.toml] [flashlab run options...]      e.g. scripts/run.sh experiments/smoke.toml
# Options go to `flashlab run` (--run-id ID, --resume, --filter, --shard, --seed, --dry-run, ...); without --run-id a
# new run is named by the UTC time, and --resume alone continues the suite's latest run.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
suite=experiments/default.toml
if [[ $# -gt 0 && "$1" != -* ]]; then suite=$1; shift; fi
run_id="" resume=0 dry_run=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    -h | --help) usage; exit 0 ;;
    --run-id) run_id=${args[i + 1]:-} ;;
    --run-id=*) run_id=${args[i]#--run-id=} ;;
    --resume) resume=1 ;;
    --dry-run) dry_run=1 ;;
  esac
done
build=$(bash scripts/build.sh | tail -n 1)
flashlab=("$build/harness/flashlab" run "$suite" --out results)
if [[ -z "$run_id" && $resume -eq 0 ]]; then
  run_id=$(date -u +%Y%m%dT%H%M%SZ)
  flashlab+=(--run-id "$run_id")
fi
status=0
"${flashlab[@]}" "$@" || status=$?
if ((status > 1 || dry_run)); then exit "$status"; fi
# the run's folder: results/<suite name>/<run id>, or (--resume without --run-id) the one just written
if [[ -n "$run_id" ]]; then
  dir=$(ls -d results/*/"$run_id" results/*/"$run_id"-shard-* 2>/dev/null | head -n 1 || true)
else
  dir=$(ls -td results/*/*/ 2>/dev/null | head -n 1 || true)
  dir=${dir%/}
fi
if [[ -z "$dir" || ! -f "$dir/results.csv" ]]; then
  echo "scripts/run.sh: no results folder found under results/ for this run" >&2
  exit 3
fi
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  python3 experiments/peers/torch_sdpa.py "$dir" --variant standard --filter pass=fwd || echo "peers failed" >&2
fi
python3 -m reports "$dir"
echo "results: $dir (exit status of the sweep: $status)"
exit "$status"
