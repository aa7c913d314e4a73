#!/usr/bin/env bash
# Prints the CMake preset to use: `cuda` when a CUDA compiler is found, else `cpu`.
# FLASHLAB_PRESET overrides the choice.
set -euo pipefail
if [[ -n "${FLASHLAB_PRESET:-}" ]]; then
  echo "$FLASHLAB_PRESET"
elif command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  echo cuda
else
  echo cpu
fi
