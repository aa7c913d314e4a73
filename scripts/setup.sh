#!/usr/bin/env bash
# Installs what flashlab needs to build and test, from the distribution's packages (Debian 12 / Ubuntu 22.04+).
# As root it installs what is missing; otherwise it prints the exact command and stops (exit 1).
# The CUDA toolkit is optional: without nvcc the CPU parts build (cmake preset `cpu`).
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config libeigen3-dev catch2 libcli11-dev libtomlplusplus-dev
          nlohmann-json3-dev libfmt-dev)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "setup: not a Debian/Ubuntu system; install by hand: CMake >= 3.24, Ninja, a C++20 compiler," \
       "Eigen 3.4, Catch2, CLI11, toml++, nlohmann-json, fmt" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "setup: missing packages: ${missing[*]}" >&2
  echo "setup: install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
