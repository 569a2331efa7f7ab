#!/usr/bin/env bash
# Builds every Rust guest under extensions/*/ (each directory with a Cargo.toml) into the
# WebAssembly component extensions/<name>/<name>.wasm, next to its extension.toml.
#
# It uses Debian's Rust toolchain (/usr/bin/cargo, /usr/bin/rustc: 1.96 with the wasm32-wasip2
# target, std sources, rust-lld and wasm-component-ld), because the rustup toolchain here has no
# wasm target and cannot download one. std is rebuilt for the target with -Zbuild-std.
#
# Usage: extensions/build.sh [--offline | --fetch] [name | path ...]
#   name        build only these guests (directory names under extensions/)
#   path        a guest crate elsewhere (an argument holding a /): its <dir>/<dir>.wasm is written
#   --offline   pass --offline to cargo: fail instead of touching crates.io (needs a warm cache)
#   --fetch     only download what a later --offline build needs (std's own dependencies, which
#               -Zbuild-std takes from crates.io, and the guests' dependencies), then stop
# Environment:
#   CARGO_TARGET_DIR   build directory (default: <repo>/target/wasm-guests)
#   SKIP_APT=1         never try to install the Debian packages
#
# Extension authors with a normal rustup toolchain do not need this script:
#   rustup target add wasm32-wasip2 && cargo build --release --target wasm32-wasip2
set -euo pipefail

EXT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$EXT_DIR/.." && pwd)"
TARGET=wasm32-wasip2
PACKAGES=(rustc-web cargo-web rust-web-llvm rust-web-src lld-22 wasi-libc)
WASI_LIBC_DIR=/usr/lib/wasm32-wasi

die() {
    echo "build.sh: error: $*" >&2
    exit 1
}
step() { echo "==> $*"; }
# shellcheck source=packages.sh
source "$EXT_DIR/packages.sh"

offline=()
fetch_only=0
names=()
for arg in "$@"; do
    case "$arg" in
        --offline) offline=(--offline) ;;
        --fetch) fetch_only=1 ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) names+=("$arg") ;;
    esac
done

# 1. The Debian toolchain.
ensure_packages "${PACKAGES[@]}"

# Debian's tools live in /usr/bin; rustup's shims usually come first on PATH, so name them all
# explicitly (cargo would otherwise run the rustup rustc, which has no wasm32-wasip2 std).
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
CARGO=/usr/bin/cargo
[[ -x "$CARGO" && -x "$RUSTC" ]] || die "$CARGO or $RUSTC is missing although the packages are installed"
"$RUSTC" --print target-list | grep -qx "$TARGET" || die "$RUSTC does not know the $TARGET target"
SYSROOT="$("$RUSTC" --print sysroot)"
[[ -f "$SYSROOT/lib/rustlib/src/rust/library/Cargo.lock" ]] ||
    die "std sources missing under $SYSROOT/lib/rustlib/src (package rust-web-src)"
[[ -f "$WASI_LIBC_DIR/libc.a" ]] || die "$WASI_LIBC_DIR/libc.a missing (package wasi-libc)"

# -Zbuild-std is unstable: allow it on the stable Debian compiler. std for wasm32-wasip2 links
# against wasi-libc; Debian's copy is not in rustc's self-contained directory, so add it to the
# link path of target artifacts only (build scripts and proc macros are unaffected).
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-L native=$WASI_LIBC_DIR"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/wasm-guests}"
unset RUSTC_WRAPPER RUSTFLAGS CARGO_BUILD_RUSTFLAGS

step "toolchain: $("$RUSTC" --version), $("$CARGO" --version)"
step "target dir: $CARGO_TARGET_DIR"

# 2. The guests.
if ((${#names[@]} == 0)); then
    # Every guest crate; a crate without extension.toml is a library (the SDK), built as a
    # dependency of the guests.
    for manifest in "$EXT_DIR"/*/Cargo.toml; do
        [[ -f "$(dirname "$manifest")/extension.toml" ]] && names+=("$(basename "$(dirname "$manifest")")")
    done
fi
((${#names[@]})) || die "no guest crates (extensions/*/Cargo.toml) found"
((fetch_only == 0 || ${#offline[@]} == 0)) || die "--fetch and --offline exclude each other"

if ((fetch_only)); then
    step "fetching std's dependencies (for -Zbuild-std)"
    "$CARGO" fetch --locked --manifest-path "$SYSROOT/lib/rustlib/src/rust/library/Cargo.toml" ||
        die "could not fetch std's dependencies from crates.io"
    for arg in "${names[@]}"; do
        crate="$(crate_dir "$arg")"
        [[ -f "$crate/Cargo.toml" ]] || die "$crate/Cargo.toml does not exist"
        step "fetching the dependencies of $(basename "$crate")"
        "$CARGO" fetch --manifest-path "$crate/Cargo.toml" || die "could not fetch the dependencies of $crate"
    done
    step "fetched: later builds work with --offline"
    exit 0
fi

# The library target name of a guest: [lib] name, else the package name with - turned into _.
lib_name() {
    awk '
        /^\[/ { section = $0 }
        section == "[package]" && /^name[ \t]*=/ && package == "" { package = $0 }
        section == "[lib]" && /^name[ \t]*=/ && lib == "" { lib = $0 }
        END {
            name = (lib != "") ? lib : package
            sub(/^name[ \t]*=[ \t]*"/, "", name); sub(/".*$/, "", name); gsub(/-/, "_", name)
            print name
        }' "$1"
}

# A guest's crate directory: extensions/<name>, or the path given.
crate_dir() {
    if [[ "$1" == */* ]]; then
        [[ -d "$1" ]] || die "$1 is not a directory"
        (cd "$1" && pwd)
    else
        echo "$EXT_DIR/$1"
    fi
}

failed=()
for arg in "${names[@]}"; do
    crate="$(crate_dir "$arg")"
    name="$(basename "$crate")"
    [[ -f "$crate/Cargo.toml" ]] || die "$crate/Cargo.toml does not exist"
    library="$(lib_name "$crate/Cargo.toml")"
    [[ -n "$library" ]] || die "cannot read the package name from $crate/Cargo.toml"
    [[ -f "$crate/extension.toml" ]] || echo "build.sh: warning: $crate/extension.toml is missing" >&2

    step "building $name"
    started=$SECONDS
    if ! "$CARGO" build "${offline[@]}" --release --target "$TARGET" -Zbuild-std=std,panic_abort \
        --manifest-path "$crate/Cargo.toml"; then
        echo "build.sh: error: cargo build failed for $name" >&2
        failed+=("$arg")
        continue
    fi
    artifact="$CARGO_TARGET_DIR/$TARGET/release/$library.wasm"
    [[ -f "$artifact" ]] || die "cargo succeeded but $artifact is missing (is crate-type = [\"cdylib\"] set?)"
    # wasm32-wasip2 output is already a component: check the preamble (layer 1 = component).
    if [[ "$(od -An -tx1 -j4 -N4 "$artifact" | tr -d ' \n')" != "0d000100" ]]; then
        die "$artifact is a core module, not a component"
    fi
    install -m 0644 "$artifact" "$crate/$name.wasm"
    if command -v wasm-tools >/dev/null; then
        wasm-tools validate --features all "$crate/$name.wasm" || die "$crate/$name.wasm does not validate"
    fi
    size=$(stat -c %s "$crate/$name.wasm")
    printf '==> %s: %s, %d bytes (%d KiB), %d s\n' \
        "$name" "${crate#"$ROOT"/}/$name.wasm" "$size" $(((size + 1023) / 1024)) $((SECONDS - started))
done

if ((${#failed[@]})); then
    die "failed: ${failed[*]}"
fi
step "done: ${names[*]}"
