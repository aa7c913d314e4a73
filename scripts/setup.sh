#!/usr/bin/env bash
# Installs what flashlab needs to build and test, from the distribution's packages (Debian 12 / Ubuntu 22.04+).
# As root it installs what is missing; otherwise it prints the exact command and stops (exit 1).
# The CUDA toolkit is optional: without nvcc the CPU parts build (cmake preset `cpu`).
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config libeigen3-dev catch2 libcli11-dev libtomlplusplus-dev
          nlohmann-json3-dev libfmt-dev python3 python3-pip)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "setup: not a Debian/Ubuntu system; install by hand: CMake >= 3.24, Ninja, a C++20 compiler," \
       "Eigen 3.4, Catch2, CLI11, toml++, nlohmann-json, fmt; Python 3 with numpy and matplotlib" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
python_missing=0
python3 -c "import numpy, matplotlib" >/dev/null 2>&1 || python_missing=1
if ((${#missing[@]} == 0 && python_missing == 0)); then
  exit 0
fi

# reports/ needs numpy and matplotlib in the python3 on PATH (which may not be the system's).
python_install=(python3 -m pip install --quiet "numpy>=1.24" "matplotlib>=3.5")

if [[ $(id -u) -ne 0 ]]; then
  echo "setup: missing: ${missing[*]} $( ((python_missing)) && echo 'python3 modules numpy, matplotlib')" >&2
  echo "setup: install them with:" >&2
  ((${#missing[@]})) && echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  ((python_missing)) && echo "  ${python_install[*]}" >&2
  exit 1
fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ((python_missing)); then
  echo "setup: installing numpy and matplotlib for $(command -v python3)" >&2
  # A distribution's own python3 refuses pip installs (PEP 668): use its packages then.
  "${python_install[@]}" 2>/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-numpy python3-matplotlib >/dev/null
  python3 -c "import numpy, matplotlib" || { echo "setup: numpy/matplotlib still missing for python3" >&2; exit 1; }
fi
