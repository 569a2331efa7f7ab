#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the system packages and fetches
# the models (models/setup.sh), builds the WebAssembly extensions (extensions/build.sh, which
# installs Debian's wasm toolchain), then runs every unit and end-to-end test, and the
# extensions' own tests on the host, runs every fuzz target for a bounded time, and the offline
# Docker deployment test (compose/test-offline.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# redis-server: the store tests run both backends, Redis as a real process on a free port.
# sox with its MP3 format: the MP3 decoding test makes its input with it.
# chromium and chromium-driver: the console's pages are tested in real headless Chromium.
# mosquitto: the MQTT fleet test runs two instances behind a real broker on a free port.
models/setup.sh redis-server sox libsox-fmt-mp3 chromium chromium-driver mosquitto
# The SenseVoice tests build their small stand-in model with PyPI's onnx and numpy.
if ! python3 -c 'import onnx, numpy' 2>/dev/null; then
  python3 -m pip install --quiet "onnx>=1.16" "numpy>=1.24" ||
    python3 -m pip install --quiet --break-system-packages "onnx>=1.16" "numpy>=1.24"
fi
extensions/build.sh
extensions/examples/exit_c/build.sh
extensions/examples/exit_py/build.sh
extensions/build.sh extensions/examples/doorbell
status=0
# The guests' own tests, natively, in one shared build directory (their common dependencies,
# the SDK and wit-bindgen among them, are built once).
for manifest in extensions/*/Cargo.toml extensions/examples/*/Cargo.toml; do
  echo "==> guest tests: ${manifest%/Cargo.toml}"
  CARGO_TARGET_DIR=target/guest-tests cargo test --quiet --manifest-path "$manifest" || status=1
done
cargo test --workspace --locked --no-fail-fast || status=1
# Every fuzz target for a bounded time (cargo-fuzz, nightly); FUZZ_SECONDS=0 skips.
if [ "${FUZZ_SECONDS:-20}" != 0 ]; then
  runtime/fuzz/run.sh || status=1
fi
# The offline deployment with the real Docker engine: package, build --network=none, deploy,
# and the checks against the containers (compose/test-offline.sh). OFFLINE_TEST=0 skips.
if [ "${OFFLINE_TEST:-1}" != 0 ]; then
  compose/test-offline.sh || status=1
fi
exit $status
