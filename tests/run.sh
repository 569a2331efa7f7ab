#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the system packages and fetches
# the models (models/setup.sh), then runs every unit and end-to-end test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
models/setup.sh
# The SenseVoice tests build their small stand-in model with PyPI's onnx and numpy.
if ! python3 -c 'import onnx, numpy' 2>/dev/null; then
  python3 -m pip install --quiet "onnx>=1.16" "numpy>=1.24" ||
    python3 -m pip install --quiet --break-system-packages "onnx>=1.16" "numpy>=1.24"
fi
cargo test --workspace --locked --no-fail-fast
