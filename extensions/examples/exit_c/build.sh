#!/usr/bin/env bash
# Builds the exit_c example (the handle_exit_intent tool in C) into
# extensions/examples/exit_c/exit_c.wasm.
#
# Usage: extensions/examples/exit_c/build.sh
#
# What it needs, installed on first use when missing:
#   - Debian clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc (apt-get, as root or sudo -n);
#   - wit-bindgen (the C bindings generator): cargo install --locked wit-bindgen-cli (~8 min once);
#   - wasm-tools (turns the core module into a component): cargo install --locked wasm-tools.
# The guest uses no stdio and no other WASI call, so its core module imports nothing and the
# component needs no WASI adapter.
#
# Environment:
#   SKIP_APT=1        never try to install the Debian packages
#   CLANG             the clang to use (default clang-19)
#   WIT_BINDGEN       a wit-bindgen to use (default: on PATH or ~/.cargo/bin, else installed)
#   WASM_TOOLS        a wasm-tools to use (default: on PATH or ~/.cargo/bin, else installed)
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DIR/../../.." && pwd)"
WIT="$ROOT/wit/xiaozhi-extension@0.2.0"
WORLD=exit-tool
ID=exit_c
BUILD="$DIR/build"
CLANG="${CLANG:-clang-19}"
PACKAGES=(clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc)
WASI_SYSROOT=/usr

die() {
    echo "exit_c/build.sh: error: $*" >&2
    exit 1
}
step() { echo "==> exit_c: $*"; }
# shellcheck source=../../packages.sh
source "$DIR/../../packages.sh"

[[ -d "$WIT" ]] || die "$WIT is missing"
[[ -f "$DIR/wit/world.wit" ]] || die "$DIR/wit/world.wit is missing"
started=$SECONDS
mkdir -p "$BUILD"

# 1. The Debian C toolchain for wasm32-wasi.
if ! command -v "$CLANG" >/dev/null; then
    ensure_packages "${PACKAGES[@]}"
fi
command -v "$CLANG" >/dev/null || die "$CLANG not found"
[[ -f "$WASI_SYSROOT/lib/wasm32-wasi/libc.a" ]] || die "$WASI_SYSROOT/lib/wasm32-wasi/libc.a missing (package wasi-libc)"

# 2. wit-bindgen and wasm-tools (Rust tools from crates.io).
find_tool() { # name, override
    if [[ -n "$2" ]]; then
        echo "$2"
    elif command -v "$1" >/dev/null; then
        command -v "$1"
    elif [[ -x "$HOME/.cargo/bin/$1" ]]; then
        echo "$HOME/.cargo/bin/$1"
    fi
}
install_tool() { # crate, binary
    command -v cargo >/dev/null || die "$2 is missing and there is no cargo to install it (cargo install --locked $1)"
    step "installing $2 with cargo install --locked $1 (several minutes, once)"
    cargo install --locked "$1" || die "cargo install --locked $1 failed"
}
wit_bindgen="$(find_tool wit-bindgen "${WIT_BINDGEN:-}")"
if [[ -z "$wit_bindgen" ]]; then
    install_tool wit-bindgen-cli wit-bindgen
    wit_bindgen="$(find_tool wit-bindgen "")"
fi
[[ -n "$wit_bindgen" ]] || die "wit-bindgen not found after installing it (is ~/.cargo/bin on PATH?)"
wasm_tools="$(find_tool wasm-tools "${WASM_TOOLS:-}")"
if [[ -z "$wasm_tools" ]]; then
    install_tool wasm-tools wasm-tools
    wasm_tools="$(find_tool wasm-tools "")"
fi
[[ -n "$wasm_tools" ]] || die "wasm-tools not found after installing it (is ~/.cargo/bin on PATH?)"
step "using $("$CLANG" --version | head -n1), $("$wit_bindgen" --version), $("$wasm_tools" --version)"

# 3. Native unit tests of the logic, when the machine has a C compiler.
if command -v cc >/dev/null; then
    step "native tests of goodbye.c"
    cc -std=c11 -Wall -Wextra -Werror -O1 -o "$BUILD/test_goodbye" "$DIR/goodbye.c" "$DIR/test_goodbye.c" ||
        die "the native tests do not compile"
    "$BUILD/test_goodbye" || die "the native tests failed"
fi

# 4. The bindings: this example's narrow world (wit/world.wit) with the xiaozhi package as a dependency.
rm -rf "$BUILD/wit" "$BUILD/gen"
mkdir -p "$BUILD/wit/deps/xiaozhi-extension" "$BUILD/gen"
cp "$DIR/wit/world.wit" "$BUILD/wit/"
cp "$WIT"/*.wit "$BUILD/wit/deps/xiaozhi-extension/"
step "generating the C bindings (world $WORLD)"
"$wit_bindgen" c --world "$WORLD" --out-dir "$BUILD/gen" "$BUILD/wit" || die "wit-bindgen c failed"

# 5. The core module (a reactor: no main) and the component.
step "compiling with $CLANG"
"$CLANG" --target=wasm32-wasi --sysroot="$WASI_SYSROOT" -mexec-model=reactor -std=c11 -Os -Wall -Wextra -Werror \
    -Wno-unused-parameter -I"$BUILD/gen" -Wl,--gc-sections -s -o "$BUILD/core.wasm" \
    "$DIR/main.c" "$DIR/goodbye.c" "$BUILD"/gen/*.c "$BUILD"/gen/*_component_type.o ||
    die "$CLANG failed"
step "making the component"
"$wasm_tools" component new "$BUILD/core.wasm" -o "$BUILD/$ID.wasm.tmp" ||
    die "wasm-tools component new failed (a WASI import needs the wasi_snapshot_preview1 reactor adapter)"
"$wasm_tools" validate --features all "$BUILD/$ID.wasm.tmp" || die "the component does not validate"
# Move into place in one step: a running server watching this folder never sees half a file.
mv -f "$BUILD/$ID.wasm.tmp" "$DIR/$ID.wasm"
size=$(stat -c %s "$DIR/$ID.wasm")
printf '==> exit_c: extensions/examples/exit_c/%s.wasm, %d bytes (%d KiB), %d s\n' \
    "$ID" "$size" $(((size + 1023) / 1024)) $((SECONDS - started))
