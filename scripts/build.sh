#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh), configures with the chosen preset and builds everything.
# Prints the build folder on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
preset=$(bash scripts/preset.sh)
cmake --preset "$preset" >&2
cmake --build --preset "$preset" >&2
echo "build/$preset"
