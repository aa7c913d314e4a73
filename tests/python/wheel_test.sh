#!/usr/bin/env bash
# The pip path end to end: builds the flashlab wheel from the repository (pyproject.toml: libflashlab by CMake inside
# the wheel, CPU build), installs it into a fresh virtual environment, and runs tests/python against the installed
# package (FLASHLAB_TEST_INSTALLED: no repository path, no FLASHLAB_LIBRARY), checking that both come from the venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv --system-site-packages "$work/venv"  # numpy from the system's python3
"$work/venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheel" "$root"
"$work/venv/bin/python" -m pip install --quiet --no-deps "$work"/wheel/flashlab-*.whl
unset FLASHLAB_LIBRARY
cd "$work"  # away from the repository: nothing of it on the path
FLASHLAB_TEST_INSTALLED=1 "$work/venv/bin/python" - "$work/venv" <<'PY'
import os, sys
import flashlab, flashlab._abi as abi
venv = os.path.realpath(sys.argv[1])
module = os.path.realpath(flashlab.__file__)
library = os.path.realpath(abi.library()._name)
assert module.startswith(venv), f"flashlab imported from {module}, not from the venv {venv}"
assert library.startswith(venv), f"libflashlab loaded from {library}, not from the installed wheel"
print("installed:", module, library, "variants:", ", ".join(flashlab.variants()))
PY
for test in "$root"/tests/python/test_*.py; do
  FLASHLAB_TEST_INSTALLED=1 "$work/venv/bin/python" "$test" -v 2>&1 | tee "$work/log"
  # the numpy tests must run here (only the torch / CUDA ones may skip)
  case "$(basename "$test")" in test_flash_attn.py | test_transformers.py | test_training.py) continue ;; esac  # PyTorch, transformers
  if grep -q "skipped" "$work/log"; then
    echo "wheel_test: $(basename "$test") skipped tests against the installed package" >&2
    exit 1
  fi
done
