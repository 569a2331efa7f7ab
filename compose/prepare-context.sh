#!/usr/bin/env bash
# Fills offline/ of a Docker build context with what the builder stage of
# Dockerfile-server-offline would otherwise download. compose/offline-package.sh runs it inside
# a container of the builder image, with network, the context mounted at /ctx:
#
#   1. the Debian packages the builder image lacks: for the server (libopus-dev, pkg-config, gcc)
#      -> offline/debs/server, for the WebAssembly guests (Debian's Rust 1.96 toolchain with std
#      sources, wasm-component-ld, lld and wasi-libc) -> offline/debs/wasm
#   2. every crate: the server workspace, each guest crate under extensions/, and std's own
#      dependencies (-Zbuild-std rebuilds std for wasm32-wasip2) -> offline/vendor, with the cargo
#      configuration that points at it -> offline/cargo-config.toml
#   3. the models and the ONNX Runtime library (models/fetch.sh) -> /models (mounted), the library
#      also -> offline/onnxruntime
#
# Environment: CTX (default /ctx), MODELS (default /models), OWNER (uid:gid given to what it writes).
set -euo pipefail
CTX="${CTX:-/ctx}"
MODELS="${MODELS:-/models}"
# What the server's build needs, and what the WebAssembly guests' build needs (Debian's Rust 1.96
# with std sources, wasm-component-ld from rust-web-llvm, lld and wasi-libc): two sets, so that the
# builder stage installs the second after compiling the server (its layers stay cached).
SERVER_PACKAGES=(libopus-dev pkg-config gcc libc6-dev)
WASM_PACKAGES=(rustc-web cargo-web rust-web-llvm rust-web-src lld-22 wasi-libc)

step() { echo "==> prepare-context: $*"; }
die() {
    echo "prepare-context: error: $*" >&2
    exit 1
}

cd "$CTX"
[[ -f Cargo.lock && -f Dockerfile-server-offline ]] || die "$CTX is not a prepared source tree"
export DEBIAN_FRONTEND=noninteractive

step "1/3 Debian packages the builder image lacks"
apt-get update -qq || die "apt-get update failed (no network, or no Debian mirror reachable?)"
# Downloads into offline/debs/$1 what this image lacks of the packages after it.
download() {
    local debs="$CTX/offline/debs/$1"
    shift
    rm -rf "$debs" && mkdir -p "$debs"
    apt-get install -y -qq --no-install-recommends --download-only -o "Dir::Cache::Archives=$debs" "$@" >/dev/null ||
        die "cannot download $*"
    rm -rf "$debs/partial" "$debs/lock"
    echo "    offline/debs/${debs##*/}: $(find "$debs" -name '*.deb' | wc -l) packages, $(du -sh "$debs" | cut -f1)"
}
download server "${SERVER_PACKAGES[@]}"
download wasm "${WASM_PACKAGES[@]}"
# The same packages here, to vendor std's sources and run pip below.
apt-get install -y -qq --no-install-recommends "${SERVER_PACKAGES[@]}" "${WASM_PACKAGES[@]}" python3 python3-pip \
    >/dev/null || die "cannot install the toolchain in the preparation container"

step "2/3 crates (cargo vendor)"
CARGO=/usr/bin/cargo
library="$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library/Cargo.toml"
[[ -f "$library" ]] || die "std sources missing: $library"
syncs=(--sync "$library")
for manifest in extensions/*/Cargo.toml; do syncs+=(--sync "$manifest"); done
rm -rf offline/vendor
"$CARGO" vendor --locked --versioned-dirs "${syncs[@]}" offline/vendor >offline/cargo-config.tail ||
    die "cargo vendor failed"
# Paths inside the builder stage (WORKDIR /src), and never the network.
{
    echo "# Written by compose/prepare-context.sh: every crate comes from offline/vendor."
    echo "[net]"
    echo "offline = true"
    echo
    sed 's|directory = ".*"|directory = "/src/offline/vendor"|' offline/cargo-config.tail
} >offline/cargo-config.toml
rm offline/cargo-config.tail
echo "    $(find offline/vendor -mindepth 1 -maxdepth 1 | wc -l) crates, $(du -sh offline/vendor | cut -f1)"

step "3/3 models and ONNX Runtime (models/fetch.sh)"
mkdir -p "$MODELS"
PIP_BREAK_SYSTEM_PACKAGES=1 models/fetch.sh "$MODELS" || die "models/fetch.sh failed"
mkdir -p offline/onnxruntime
cp "$MODELS/lib/libonnxruntime.so.1.32.0" offline/onnxruntime/

if [[ -n "${OWNER:-}" ]]; then
    chown -R "$OWNER" "$CTX/offline" "$MODELS"
fi
step "done"
