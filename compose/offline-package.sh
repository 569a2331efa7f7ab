#!/usr/bin/env bash
# Builds the offline package on a machine with internet (and Docker): everything an offline
# server needs to run xiaozhi-server, in one xiaozhi-offline-<version>-<date>.tar.gz.
#
#   1. checks: Docker answers, enough free disk, the base images are here (or can be pulled)
#   2. the build context: the source tree plus offline/ (compose/prepare-context.sh, run in a
#      container of the builder image: Debian packages, vendored crates, models, ONNX Runtime)
#   3. the Debian packages the runtime image lacks (downloaded in a container of that image)
#   4. docker build --network=none -f Dockerfile-server-offline: proof that the build needs no network
#   5. docker save of the server, Redis and mosquitto images
#   6. the package: images, compose files, deploy and backup scripts, data/.config.yaml
#      templates, the built-in extensions, the models and SHA256SUMS
#
# Usage: compose/offline-package.sh [--out DIR]      (default DIR: target/offline)
# Environment (defaults in brackets):
#   BUILDER_IMAGE  [rust:1.95-bookworm]    RUNTIME_IMAGE  [debian:bookworm-slim]
#   REDIS_IMAGE    [redis:7-bookworm]      SERVER_IMAGE   [xiaozhi-server:<version>]
#   MOSQUITTO_IMAGE [eclipse-mosquitto:2]  (the broker of docker-compose.mosquitto.yml)
#   WORK_DIR       [target/offline/work]   build context and caches (kept: reruns are faster)
#   BAKE_MODELS=1  also copy the models into the image (they are always in the package)
#   TZ             [Asia/Shanghai]         default time zone of the deployment (its .env)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILDER_IMAGE="${BUILDER_IMAGE:-rust:1.95-bookworm}"
RUNTIME_IMAGE="${RUNTIME_IMAGE:-debian:bookworm-slim}"
REDIS_IMAGE="${REDIS_IMAGE:-redis:7-bookworm}"
MOSQUITTO_IMAGE="${MOSQUITTO_IMAGE:-eclipse-mosquitto:2}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
SERVER_IMAGE="${SERVER_IMAGE:-xiaozhi-server:$VERSION}"
WORK_DIR="${WORK_DIR:-$ROOT/target/offline/work}"
BAKE_MODELS="${BAKE_MODELS:-0}"
DEPLOY_TZ="${TZ:-Asia/Shanghai}"
RUNTIME_PACKAGES=(libopus0 espeak-ng tzdata ca-certificates)
NEED_GB=8

out="$ROOT/target/offline"
while (($#)); do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) echo "offline-package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

total=6
started=$SECONDS
step() { printf '==> [%s/%d] %s (%d s)\n' "$1" "$total" "$2" $((SECONDS - started)); }
die() {
    echo "offline-package.sh: error: $*" >&2
    exit 1
}
free_gb() { df -Pk "$1" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }

step 1 "checks"
command -v docker >/dev/null || die "docker is not installed (https://docs.docker.com/engine/install/)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer: is it running, and may $(id -un) use it?"
mkdir -p "$out" "$WORK_DIR"
out="$(cd "$out" && pwd)"
for dir in "$WORK_DIR" "$out" "$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || echo /)"; do
    [[ -d "$dir" ]] || continue
    gb="$(free_gb "$dir")"
    ((gb >= NEED_GB)) || die "only $gb GB free under $dir; the build needs about $NEED_GB GB"
done
for image in "$BUILDER_IMAGE" "$RUNTIME_IMAGE" "$REDIS_IMAGE" "$MOSQUITTO_IMAGE"; do
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        echo "    pulling $image"
        docker pull -q "$image" >/dev/null || die "image $image is neither here nor pullable"
    fi
done
echo "    version $VERSION, images: builder $BUILDER_IMAGE, runtime $RUNTIME_IMAGE, redis $REDIS_IMAGE, mosquitto $MOSQUITTO_IMAGE"

# The preparation containers download over HTTPS (crates.io, PyPI) with this machine's trust and
# proxy settings: a TLS-inspecting proxy's CA in the host's bundle is trusted inside them too.
trust=()
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [[ -n "${!var:-}" ]] && trust+=(-e "$var")
done
host_ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
if [[ -f "$host_ca" ]]; then
    trust+=(-v "$host_ca:/etc/ssl/host-ca.crt:ro" -e CARGO_HTTP_CAINFO=/etc/ssl/host-ca.crt
        -e SSL_CERT_FILE=/etc/ssl/host-ca.crt -e PIP_CERT=/etc/ssl/host-ca.crt)
fi

step 2 "build context (sources, Debian packages, vendored crates, models) in $WORK_DIR"
ctx="$WORK_DIR/context"
models="$WORK_DIR/models"
mkdir -p "$ctx" "$models"
# The sources: git's files when this is a checkout (tracked and new, not ignored), else the tree
# without build output. Kept offline/ folders are refreshed below.
find "$ctx" -mindepth 1 -maxdepth 1 ! -name offline -exec rm -rf {} +
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -xf - -C "$ctx"
else
    tar -C "$ROOT" --exclude=./target --exclude=./data --exclude=./.git -cf - . | tar -xf - -C "$ctx"
fi
mkdir -p "$ctx/offline/models"
cargo_cache="$WORK_DIR/cargo-registry"
[[ -d "${CARGO_HOME:-$HOME/.cargo}/registry" ]] && cargo_cache="${CARGO_HOME:-$HOME/.cargo}/registry"
mkdir -p "$cargo_cache"
docker run --rm --network host "${trust[@]}" \
    -v "$ctx:/ctx" -v "$models:/models" -v "$cargo_cache:/cargo-home/registry" \
    -e CARGO_HOME=/cargo-home -e OWNER="$(id -u):$(id -g)" \
    "$BUILDER_IMAGE" bash /ctx/compose/prepare-context.sh || die "preparing the build context failed"
rm -rf "$ctx/offline/models" && mkdir -p "$ctx/offline/models"
if [[ "$BAKE_MODELS" == 1 ]]; then
    cp -a "$models/." "$ctx/offline/models/" && rm -rf "$ctx/offline/models/lib"
fi

step 3 "Debian packages the runtime image lacks: ${RUNTIME_PACKAGES[*]}"
debs="$ctx/offline/debs/runtime"
rm -rf "$debs" && mkdir -p "$debs"
docker run --rm --network host "${trust[@]}" -v "$debs:/out" "$RUNTIME_IMAGE" bash -c "set -e
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --download-only \
        -o Dir::Cache::Archives=/out ${RUNTIME_PACKAGES[*]} >/dev/null
    rm -rf /out/partial /out/lock
    chown -R $(id -u):$(id -g) /out" || die "cannot download ${RUNTIME_PACKAGES[*]} for $RUNTIME_IMAGE"
echo "    $(find "$debs" -name '*.deb' | wc -l) packages, $(du -sh "$debs" | cut -f1)"

step 4 "docker build --network=none ($SERVER_IMAGE)"
build_started=$SECONDS
DOCKER_BUILDKIT=0 docker build --network=none -f "$ctx/Dockerfile-server-offline" \
    --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" \
    --build-arg BAKE_MODELS="$BAKE_MODELS" -t "$SERVER_IMAGE" "$ctx" || die "docker build failed"
echo "    built in $((SECONDS - build_started)) s: $SERVER_IMAGE," \
    "$(docker image inspect -f '{{.Size}}' "$SERVER_IMAGE" | awk '{ printf "%.1f MB", $1 / 1e6 }')"

step 5 "docker save $SERVER_IMAGE $REDIS_IMAGE $MOSQUITTO_IMAGE"
name="xiaozhi-offline-$VERSION-$(date +%Y%m%d)"
pkg="$WORK_DIR/$name"
rm -rf "$pkg" && mkdir -p "$pkg/images" "$pkg/config"
docker save -o "$pkg/images/images.tar" "$SERVER_IMAGE" "$REDIS_IMAGE" "$MOSQUITTO_IMAGE" || die "docker save failed"

step 6 "package $out/$name.tar.gz"
cp "$ROOT"/compose/{offline-deploy.sh,backup.sh,common.sh,docker-compose.yml,docker-compose.embedded.yml} "$pkg/"
cp "$ROOT"/compose/docker-compose.mosquitto.yml "$pkg/"
cp "$ROOT"/compose/config/*.yaml "$pkg/config/"
mkdir -p "$pkg/mosquitto" && cp "$ROOT"/compose/mosquitto/mosquitto.conf "$pkg/mosquitto/"
# The built-in extensions exactly as the image holds them.
container="$(docker create "$SERVER_IMAGE")"
docker cp "$container:/opt/xiaozhi/extensions" "$pkg/extensions" && docker rm "$container" >/dev/null
cp -a "$models" "$pkg/models" && rm -rf "$pkg/models/lib"
sed -e "s|@SERVER_IMAGE@|$SERVER_IMAGE|" -e "s|@REDIS_IMAGE@|$REDIS_IMAGE|" -e "s|@MOSQUITTO_IMAGE@|$MOSQUITTO_IMAGE|" \
    -e "s|@TZ@|$DEPLOY_TZ|" \
    "$ROOT/compose/env.template" >"$pkg/.env"
echo "$VERSION" >"$pkg/VERSION"
(cd "$pkg" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum >SHA256SUMS)
tmp="$out/.$name.tar.gz.part"
tar -C "$WORK_DIR" -cf - "$name" | gzip -1 >"$tmp" || die "writing $tmp failed (disk full?)"
mv "$tmp" "$out/$name.tar.gz"
rm -rf "$pkg"
echo "==> $out/$name.tar.gz: $(du -h "$out/$name.tar.gz" | cut -f1), in $((SECONDS - started)) s"
