#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine to build and run the server: installs the system
# packages (libopus-dev and pkg-config to build, espeak-ng for test speech and Piper phonemes),
# then fetches the models and the ONNX Runtime library with models/fetch.sh. Packages given as
# arguments are installed too (tests/run.sh adds redis-server).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

need=(libopus-dev pkg-config espeak-ng "$@")
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup.sh: run as root or install sudo" >&2; exit 1; }
    sudo_cmd="sudo"
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$here/fetch.sh"
