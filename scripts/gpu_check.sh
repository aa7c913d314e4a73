#!/usr/bin/env bash
# On a CUDA machine: the GPU tests, compute-sanitizer, the default and memory-scaling suites, PyTorch SDPA peers
# on the speed row, an Nsight Compute cross-check of one row's DRAM traffic, and the reports. Everything it
# writes goes under OUTDIR (logs, results, figures) and into OUTDIR/artifacts.tar.gz.
#   scripts/gpu_check.sh BUILD_DIR OUTDIR [--quick]
set -uo pipefail
build=${1:?usage: scripts/gpu_check.sh BUILD_DIR OUTDIR [--quick]}
out=${2:?usage: scripts/gpu_check.sh BUILD_DIR OUTDIR [--quick]}
quick=${3:-}
flashlab="$build/harness/flashlab"
test_gpu="$build/tests/gpu/test_gpu"
mkdir -p "$out"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/cuda/extras/CUPTI/lib64:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
step() { echo "== $* ($(date -u +%H:%M:%S))"; }

step device
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/device.txt"

step "GPU tests"
"$test_gpu" --durations yes > "$out/test_gpu.log" 2>&1; echo "test_gpu exit $?"; tail -n 4 "$out/test_gpu.log"

step "compute-sanitizer (memcheck, racecheck, initcheck, synccheck) on the small standard tests"
for tool in memcheck racecheck initcheck synccheck; do
  timeout 200 compute-sanitizer --tool "$tool" --error-exitcode 9 "$test_gpu" "[sanitize]" > "$out/sanitizer_$tool.log" 2>&1
  echo "$tool exit $?: $(grep -E 'ERROR SUMMARY|All tests passed|test cases' "$out/sanitizer_$tool.log" | tr '\n' ' ')"
done

step "default suite"
"$flashlab" run experiments/default.toml --out "$out/results" --run-id gpu > "$out/default.log" 2>&1
echo "flashlab exit $?"; tail -n 2 "$out/default.log"
step "PyTorch SDPA peers on the speed row (and the d=64 memory-scaling rows, forward only)"
python3 experiments/peers/torch_sdpa.py "$out/results/default/gpu" --variant standard --filter pass=fwd \
  --backends math,flash,cudnn,efficient > "$out/peers.log" 2>&1; echo "peers exit $?"; tail -n 6 "$out/peers.log"

if [[ "$quick" != "--quick" ]]; then
  step "memory scaling suite"
  "$flashlab" run experiments/memory_scaling.toml --out "$out/results" --run-id gpu > "$out/memory_scaling.log" 2>&1
  echo "flashlab exit $?"; tail -n 2 "$out/memory_scaling.log"
fi

step "Nsight Compute cross-check of one standard row's DRAM traffic"
cat > "$out/ncu_row.toml" <<'TOML'
[suite]
name = "ncu_row"
warmup = 0
repetitions = 1
verify = "none"
profile = false
[fixed]
variant = "standard"
pass = "fwd"
dtype = "bf16"
batch = 1
heads = 16
head_dim = 64
seqlen = 4096
TOML
sed -e 's/profile = false/profile = true/' -e 's/name = "ncu_row"/name = "cupti_row"/' "$out/ncu_row.toml" > "$out/cupti_row.toml"
"$flashlab" run "$out/cupti_row.toml" --out "$out/results" --run-id gpu > /dev/null 2>&1
timeout 120 ncu --clock-control none --print-units base --csv \
  --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_write.sum \
  "$flashlab" run "$out/ncu_row.toml" --out "$out/ncu_results" --run-id ncu > "$out/ncu.csv" 2> "$out/ncu.log"
echo "ncu exit $?"

step reports
for dir in "$out"/results/*/gpu; do python3 -m reports "$dir" >> "$out/reports.log" 2>&1 || echo "reports failed for $dir"; done
tar -C "$out" -czf "$out/artifacts.tar.gz" results device.txt test_gpu.log sanitizer_memcheck.log \
  sanitizer_racecheck.log sanitizer_initcheck.log sanitizer_synccheck.log default.log peers.log ncu.csv ncu.log \
  reports.log \
  $( [[ -f "$out/memory_scaling.log" ]] && echo memory_scaling.log ) 2>/dev/null
step done
