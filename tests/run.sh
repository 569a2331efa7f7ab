#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the system packages and fetches
# the models (models/setup.sh), then runs every unit and end-to-end test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
models/setup.sh
cargo test --workspace --locked
