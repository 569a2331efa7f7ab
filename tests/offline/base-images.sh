#!/usr/bin/env bash
# Creates local stand-ins for the official base images the offline Dockerfile and compose files
# name, on a machine whose Docker engine cannot pull from any registry (this project's test
# machines). Each image is made only when missing, so a machine that keeps its Docker images
# reuses them.
#
#   xiaozhi-local/debian:bookworm-slim   debootstrap --variant=minbase bookworm, slimmed the way
#                                        the official debian:bookworm-slim is (no docs, man pages
#                                        or locales; the same dpkg path excludes)
#   xiaozhi-local/rust:bookworm          the same plus Debian's Rust toolchain (rustc-web and
#                                        cargo-web 1.96, from bookworm-security), gcc, pkg-config,
#                                        python3: what the official rust:*-bookworm image brings
#   xiaozhi-local/redis:7                the same as the first plus Debian's redis-server
#   xiaozhi-local/mosquitto:2            the same as the first plus Debian's mosquitto
#
# Usage: tests/offline/base-images.sh [--rebuild]
# Needs root (debootstrap), Docker, and Debian's package mirror.
set -euo pipefail

PREFIX=xiaozhi-local
SLIM=$PREFIX/debian:bookworm-slim
RUST=$PREFIX/rust:bookworm
REDIS=$PREFIX/redis:7
MOSQUITTO=$PREFIX/mosquitto:2
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

step() { echo "==> base-images: $*"; }
die() {
    echo "base-images: error: $*" >&2
    exit 1
}
have() { docker image inspect "$1" >/dev/null 2>&1; }

rebuild=0
[[ "${1:-}" == --rebuild ]] && rebuild=1
((EUID == 0)) || die "run as root (debootstrap needs it)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable"

if ((rebuild)) || ! have "$SLIM"; then
    if ! command -v debootstrap >/dev/null; then
        step "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; } ||
            die "cannot install debootstrap"
    fi
    root="$(mktemp -d /var/tmp/xiaozhi-rootfs.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    step "debootstrap bookworm (minbase) into $root"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 ||
        { tail -20 "$root.log" >&2; die "debootstrap failed (log: $root.log)"; }
    rm -f "$root.log"
    # What the official slim image does: keep docs, man pages and translations out, now and for
    # every package installed later; the three suites of the official sources.
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/{man,groff,info,lintian,linda,locale}/* "$root"/var/lib/apt/lists/* \
        "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    step "importing $SLIM"
    tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$SLIM" >/dev/null
    rm -rf "$root"
    trap - EXIT
    rebuild=1
fi

# An image that is $SLIM plus Debian packages, committed from a container that installed them.
derive() {
    local name="$1" cmd="$2"
    shift 2
    step "making $name: $*"
    local id
    id="$(docker run -d --network host "$SLIM" bash -c "set -e
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $* >/dev/null
        apt-get clean
        rm -rf /var/lib/apt/lists/*")"
    if [[ "$(docker wait "$id")" != 0 ]]; then
        docker logs "$id" >&2
        docker rm "$id" >/dev/null
        die "installing $* for $name failed"
    fi
    docker commit --change "CMD $cmd" "$id" "$name" >/dev/null
    docker rm "$id" >/dev/null
}

if ((rebuild)) || ! have "$RUST"; then
    derive "$RUST" '["bash"]' rustc-web cargo-web gcc libc6-dev pkg-config python3 ca-certificates
fi
if ((rebuild)) || ! have "$REDIS"; then
    derive "$REDIS" '["redis-server"]' redis-server
fi
if ((rebuild)) || ! have "$MOSQUITTO"; then
    derive "$MOSQUITTO" '["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]' mosquitto
fi
docker image ls "$PREFIX/*" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
