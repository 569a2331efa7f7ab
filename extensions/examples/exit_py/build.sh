#!/usr/bin/env bash
# Builds the exit_py example (the handle_exit_intent tool in Python) into
# extensions/examples/exit_py/exit_py.wasm with componentize-py.
#
# Usage: extensions/examples/exit_py/build.sh
#
# componentize-py is installed with pip into a virtual environment under build/venv the first
# time (PyPI is needed once); later builds work offline. The component embeds CPython and its
# standard library (about 18 MB); the host compiles it once and keeps the result in its cache.
#
# Environment:
#   PYTHON                 the Python 3 to create the virtual environment with (default python3)
#   COMPONENTIZE_PY        a componentize-py to use instead of installing one
#   COMPONENTIZE_PY_VERSION  the version pip installs (default 0.25.1)
#   SKIP_APT=1             never try to install python3-venv with apt-get
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DIR/../../.." && pwd)"
WIT="$ROOT/wit/xiaozhi-extension@0.2.0"
WORLD=exit-tool
ID=exit_py
BUILD="$DIR/build"
VERSION="${COMPONENTIZE_PY_VERSION:-0.25.1}"

die() {
    echo "exit_py/build.sh: error: $*" >&2
    exit 1
}
step() { echo "==> exit_py: $*"; }

[[ -d "$WIT" ]] || die "$WIT is missing"
[[ -f "$DIR/wit/world.wit" ]] || die "$DIR/wit/world.wit is missing"
started=$SECONDS

mkdir -p "$BUILD"

# 1. componentize-py.
componentize="${COMPONENTIZE_PY:-}"
if [[ -z "$componentize" ]]; then
    componentize="$BUILD/venv/bin/componentize-py"
    if [[ ! -x "$componentize" ]] || ! "$componentize" --version 2>/dev/null | grep -q " $VERSION\$"; then
        python="${PYTHON:-python3}"
        command -v "$python" >/dev/null || die "$python not found (set PYTHON)"
        step "creating a virtual environment in $BUILD/venv"
        rm -rf "$BUILD/venv"
        if ! "$python" -m venv "$BUILD/venv"; then
            # Debian splits venv (and its bundled pip) into python3-venv.
            if [[ "${SKIP_APT:-0}" != 1 ]] && ((EUID == 0)) && command -v apt-get >/dev/null; then
                step "installing python3-venv"
                rm -rf "$BUILD/venv"
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv ||
                    die "could not install python3-venv"
                "$python" -m venv "$BUILD/venv" || die "could not create the virtual environment"
            else
                die "could not create the virtual environment (Debian: apt-get install python3-venv)"
            fi
        fi
        step "installing componentize-py $VERSION from PyPI"
        "$BUILD/venv/bin/python" -m pip install --disable-pip-version-check -q "componentize-py==$VERSION" ||
            die "pip could not install componentize-py==$VERSION"
    fi
fi
[[ -x "$componentize" ]] || command -v "$componentize" >/dev/null || die "componentize-py not found at $componentize"
step "using $("$componentize" --version)"

# 2. The WIT: this example's narrow world (wit/world.wit) with the xiaozhi package as a dependency.
rm -rf "$BUILD/wit"
mkdir -p "$BUILD/wit/deps/xiaozhi-extension"
cp "$DIR/wit/world.wit" "$BUILD/wit/"
cp "$WIT"/*.wit "$BUILD/wit/deps/xiaozhi-extension/"

# 3. Native unit tests of app.py against the generated bindings.
step "native tests of app.py"
rm -rf "$BUILD/bindings"
"$componentize" -d "$BUILD/wit" -w "$WORLD" bindings "$BUILD/bindings" >/dev/null || die "componentize-py bindings failed"
python_run="$BUILD/venv/bin/python"
[[ -x "$python_run" ]] || python_run="${PYTHON:-python3}"
(cd "$DIR" && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$BUILD/bindings:$DIR" "$python_run" -m unittest -q test_app 2>&1) ||
    die "the native tests of app.py failed"

# 4. The component: app.py plus CPython, its standard library and the generated bindings.
step "componentizing app.py (world $WORLD)"
# From a folder holding only app.py: componentize-py bundles the Python files it finds on -p.
rm -rf "$BUILD/src"
mkdir -p "$BUILD/src"
cp "$DIR/app.py" "$BUILD/src/"
t=$SECONDS
PYTHONDONTWRITEBYTECODE=1 "$componentize" -d "$BUILD/wit" -w "$WORLD" componentize app -p "$BUILD/src" -o "$BUILD/$ID.wasm.tmp" ||
    die "componentize-py failed"
if command -v wasm-tools >/dev/null; then
    wasm-tools validate --features all "$BUILD/$ID.wasm.tmp" || die "the component does not validate"
fi
# Move into place in one step: a running server watching this folder never sees half a file.
mv -f "$BUILD/$ID.wasm.tmp" "$DIR/$ID.wasm"
size=$(stat -c %s "$DIR/$ID.wasm")
printf '==> exit_py: extensions/examples/exit_py/%s.wasm, %d bytes (%d KiB); componentize %d s, total %d s\n' \
    "$ID" "$size" $(((size + 1023) / 1024)) $((SECONDS - t)) $((SECONDS - started))
