#!/usr/bin/env bash
# Installs the build's libflashlab and CMake package into a fresh prefix, builds tests/abi/consumer against it with
# find_package(flashlab) and runs it. Usage: install_and_consume.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source=$2
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix/install" > "$prefix/install.log"
cmake -S "$source/tests/abi/consumer" -B "$prefix/consumer" -DCMAKE_PREFIX_PATH="$prefix/install" \
  -DCMAKE_BUILD_TYPE=Release > "$prefix/configure.log" || { cat "$prefix/configure.log"; exit 1; }
cmake --build "$prefix/consumer" > "$prefix/build.log" || { cat "$prefix/build.log"; exit 1; }
ls "$prefix/install/include/flashlab/flashlab.h" "$prefix/install/lib"*/cmake/flashlab/flashlabConfig.cmake > /dev/null
"$prefix/consumer/consumer"
