# shellcheck shell=bash
# Sourced by offline-deploy.sh and backup.sh (both run in a deployment directory holding
# docker-compose.yml, .env and this file). Defines: step, die, the compose command, and helpers
# to wait for the server's health and to give the mounted data directory to the server's user.

# The uid:gid the server runs as inside its image (Dockerfile-server-offline).
SERVER_USER=10001:10001

step() { echo "==> $*"; }
die() {
    echo "error: $*" >&2
    exit 1
}

# Sets COMPOSE to the Compose command this machine has (v2 plugin or v1 docker-compose).
find_compose() {
    command -v docker >/dev/null || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer: is it running, and may $(id -un) use it?"
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null; then
        COMPOSE=(docker-compose)
    else
        die "neither 'docker compose' nor docker-compose is installed"
    fi
}

# The value of KEY in the .env of the current directory (empty when absent).
env_value() { sed -n "s/^$1=//p" .env 2>/dev/null | tail -1; }

# Gives DIR (a mounted data directory) to the server's user, through a container so that a
# member of the docker group needs no sudo.
own_data() {
    local dir="$1"
    docker run --rm --user 0 --entrypoint chown -v "$(cd "$dir" && pwd):/d" "$(env_value XIAOZHI_IMAGE)" \
        -R "$SERVER_USER" /d || die "cannot give $dir to uid $SERVER_USER"
    chmod 0750 "$dir"
}

# Waits until the server container reports healthy (its HEALTHCHECK asks /health), at most
# $1 seconds; prints the compose logs and fails otherwise.
wait_healthy() {
    local limit="$1" started=$SECONDS id status
    while :; do
        id="$("${COMPOSE[@]}" ps -q xiaozhi-server 2>/dev/null || true)"
        status="$( [[ -n "$id" ]] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo starting)"
        [[ "$status" == healthy ]] && return 0
        if ((SECONDS - started >= limit)); then
            "${COMPOSE[@]}" logs --tail 60 >&2 || true
            die "the server is not healthy after ${limit} s (status: $status); its logs are above"
        fi
        sleep 1
    done
}
