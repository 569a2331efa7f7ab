#!/usr/bin/env bash
if grep -q $'\r' "$0"; then sed -i 's/\r$//' "$0"; exec bash "$0" "$@"; fi # CRLF from Windows: fix, rerun
# Deploys (or upgrades) xiaozhi-server from this offline package on a machine with Docker and no
# internet. Run it from the unpacked package:
#
#   bash offline-deploy.sh [--dir DIR] [--embedded | --redis | --mosquitto] [--timeout SECONDS]
#
#   --dir DIR     the deployment directory (default /opt/xiaozhi-server); created if missing
#   --embedded    server alone, state in SQLite (docker-compose.embedded.yml)
#   --redis       server + Redis with AOF (docker-compose.yml); the default for a new deployment,
#                 an existing one keeps its choice
#   --mosquitto   server + Redis + a mosquitto broker, MQTT fleet mode (docker-compose.yml and
#                 docker-compose.mosquitto.yml); devices get the broker in their OTA answer
#   --timeout S   how long to wait for the server to report healthy (default 180)
#
# It fixes Windows line endings in the package's text files, verifies SHA256SUMS, loads the
# images, creates DIR/{data,redis/data,extensions,models,music} with the right owners and modes, writes
# DIR/data/.config.yaml from a template unless it exists, starts the stack, waits until the server
# is healthy and prints the WebSocket and OTA URLs. Running it again changes nothing that works.
# When DIR holds another version, it is backed up first (DIR/backups/) and its data kept;
# the built-in extensions and the models are replaced, your own extensions and settings are not.
set -euo pipefail

PKG="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Text files that went through Windows may have CRLF line endings (SHA256SUMS is of the
# originals): repaired first, since common.sh is one of them.
fixed=()
while IFS= read -r -d '' file; do
    if grep -q $'\r' "$file"; then
        sed -i 's/\r$//' "$file"
        fixed+=("${file#"$PKG"/}")
    fi
done < <(find "$PKG" -maxdepth 3 -type f \( -name '*.sh' -o -name '*.yml' -o -name '*.yaml' -o -name '*.toml' \
    -o -name '.env' -o -name VERSION -o -name SHA256SUMS -o -name '*.json' \) -print0)
# shellcheck source=common.sh
source "$PKG/common.sh"

dir=/opt/xiaozhi-server
variant=""
timeout=180
while (($#)); do
    case "$1" in
        --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
        --embedded) variant=embedded; shift ;;
        --redis) variant=redis; shift ;;
        --mosquitto) variant=mosquitto; shift ;;
        --timeout) timeout="${2:?--timeout needs seconds}"; shift 2 ;;
        -h | --help)
            awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
started=$SECONDS

step "checking the package in $PKG"
for file in "${fixed[@]}"; do echo "    fixed Windows line endings: $file"; done
[[ -f "$PKG/SHA256SUMS" ]] || die "$PKG/SHA256SUMS is missing: not an offline package?"
if ! bad="$(cd "$PKG" && sha256sum --quiet -c SHA256SUMS 2>&1)"; then
    echo "$bad" >&2
    die "the package is damaged (files above); copy it again"
fi
version="$(cat "$PKG/VERSION")"
echo "    version $version, checksums ok"

find_compose
step "loading the images"
docker load -i "$PKG/images/images.tar" | sed 's/^/    /'

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
cd "$dir"
installed="$(cat VERSION 2>/dev/null || true)"
if [[ -n "$installed" && "$installed" != "$version" ]]; then
    step "upgrading $installed -> $version: backing up first"
    bash ./backup.sh || die "the backup before the upgrade failed; nothing was changed"
    "${COMPOSE[@]}" down
fi
fresh=0
[[ "$installed" == "$version" ]] || fresh=1

step "deployment directory $dir"
if [[ -z "$variant" ]]; then
    variant=redis
    [[ "$(env_value COMPOSE_FILE)" == docker-compose.embedded.yml ]] && variant=embedded
    [[ "$(env_value COMPOSE_FILE)" == *docker-compose.mosquitto.yml ]] && variant=mosquitto
fi
compose_file=docker-compose.yml
[[ "$variant" == embedded ]] && compose_file=docker-compose.embedded.yml
[[ "$variant" == mosquitto ]] && compose_file=docker-compose.yml:docker-compose.mosquitto.yml
install -m 0644 "$PKG"/docker-compose.yml "$PKG"/docker-compose.embedded.yml "$PKG"/docker-compose.mosquitto.yml \
    "$PKG"/common.sh .
install -m 0755 "$PKG"/offline-deploy.sh "$PKG"/backup.sh .
# .env: the package's image names and the chosen compose file; every other line you edited stays.
if [[ -f .env ]]; then
    grep -v -E '^(XIAOZHI_IMAGE|REDIS_IMAGE|MOSQUITTO_IMAGE|COMPOSE_FILE)=' .env >.env.new || true
else
    grep -v -E '^(XIAOZHI_IMAGE|REDIS_IMAGE|MOSQUITTO_IMAGE|COMPOSE_FILE)=' "$PKG/.env" >.env.new || true
fi
grep -E '^(XIAOZHI_IMAGE|REDIS_IMAGE|MOSQUITTO_IMAGE)=' "$PKG/.env" >>.env.new
echo "COMPOSE_FILE=$compose_file" >>.env.new
mv .env.new .env
echo "    $compose_file ($variant store), images $(env_value XIAOZHI_IMAGE) $( [[ $variant != embedded ]] && env_value REDIS_IMAGE) $( [[ $variant == mosquitto ]] && env_value MOSQUITTO_IMAGE)"

ip="$(hostname -I 2>/dev/null | awk '{ print $1 }')"
ip="${ip:-127.0.0.1}"
mkdir -p data redis/data extensions models music
if [[ "$variant" == mosquitto ]]; then
    mkdir -p mosquitto
    [[ -f mosquitto/mosquitto.conf ]] || install -m 0644 "$PKG/mosquitto/mosquitto.conf" mosquitto/
fi
if [[ ! -f data/.config.yaml ]]; then
    # The fleet keys name this machine: the address devices reach it at, the broker's port.
    broker_port="${XIAOZHI_BROKER_PORT:-$(env_value XIAOZHI_BROKER_PORT)}"
    sed -e "s|@HOST@|$ip|g" -e "s|@BROKER_PORT@|${broker_port:-1883}|g" "$PKG/config/config.$variant.yaml" >data/.config.yaml
    chmod 0640 data/.config.yaml
    echo "    wrote data/.config.yaml (edit it for your providers)"
elif [[ "$variant" == mosquitto ]] && ! grep -q '^mqtt:' data/.config.yaml; then
    echo "    data/.config.yaml has no mqtt: section: add the fleet keys of $PKG/config/config.mosquitto.yaml"
fi
own_data data
chmod 0750 redis/data
if ((fresh)); then
    # Built-in extensions and models of this version; other extensions are left alone.
    cp -R "$PKG/extensions/." extensions/
    cp -R "$PKG/models/." models/
    echo "    installed $(find "$PKG/extensions" -mindepth 1 -maxdepth 1 -type d | wc -l) built-in extensions and the models"
fi
chmod -R a+rX extensions models music
echo "$version" >VERSION

step "starting ($("${COMPOSE[@]}" version --short 2>/dev/null || echo compose))"
"${COMPOSE[@]}" up -d --remove-orphans
wait_healthy "$timeout"
step "healthy after $((SECONDS - started)) s"
echo "    WebSocket (devices): ws://$ip:$(env_value XIAOZHI_WS_PORT)/xiaozhi/v1/"
echo "    OTA (firmware OTA URL): http://$ip:$(env_value XIAOZHI_HTTP_PORT)/xiaozhi/ota/"
if [[ "$variant" == mosquitto ]]; then
    echo "    MQTT broker (devices, from OTA): $ip:${XIAOZHI_BROKER_PORT:-$(env_value XIAOZHI_BROKER_PORT)}, UDP audio: $ip:8884"
fi
echo "    settings: $dir/data/.config.yaml   extensions: $dir/extensions   backups: bash $dir/backup.sh"
