#!/usr/bin/env bash
if grep -q $'\r' "$0"; then sed -i 's/\r$//' "$0"; exec bash "$0" "$@"; fi # CRLF from Windows: fix, rerun
# Backs up a xiaozhi-server deployment, or restores one. Run it in the deployment directory
# (offline-deploy.sh puts it there).
#
#   bash backup.sh [--out FILE]       write a backup (default backups/xiaozhi-backup-<time>.tar.gz)
#   bash backup.sh restore FILE       put FILE's data back (this or a fresh deployment) and start
#
# A backup holds: data/ (settings, embedded store, firmware; not the extension cache), Redis's
# data (after a SAVE, when the Redis service runs), .env, VERSION, and a JSON export of every
# device the store knows (`xiaozhi-server data export`: memory and chat history), which restore
# imports again so that it works across store types and Redis versions.
# Restore stops the stack, moves the current data/ and redis/data aside (*.before-restore-<time>),
# unpacks the backup, starts the stack, waits for health and imports the exports.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$DEPLOY"
# shellcheck source=common.sh
source ./common.sh
find_compose

running() { "${COMPOSE[@]}" ps "$1" 2>/dev/null | grep -q -E 'Up|running'; }
server() { "${COMPOSE[@]}" exec -T xiaozhi-server xiaozhi-server "$@"; }
stamp="$(date +%Y%m%d-%H%M%S)"

backup() {
    local out="$1" work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$work/backup/exports" "$(dirname "$out")"
    if running xiaozhi-server; then
        step "exporting every device's memory and chat history"
        local devices=0 device
        while IFS= read -r device; do
            [[ -n "$device" ]] || continue
            server data export "$device" >"$work/backup/exports/$(printf '%s' "$device" | tr -c 'A-Za-z0-9._-' '_').json" ||
                die "exporting $device failed"
            devices=$((devices + 1))
        done < <(server data devices)
        echo "    $devices device(s)"
    else
        echo "    the server is not running: no JSON export (data/ and Redis's files are still saved)"
    fi
    if [[ -d redis/data ]] && running redis; then
        step "Redis: SAVE"
        "${COMPOSE[@]}" exec -T redis redis-cli SAVE >/dev/null || die "redis-cli SAVE failed"
    fi
    step "packing"
    local items=(data .env VERSION)
    [[ -d redis/data ]] && items+=(redis/data)
    # Read as root through a container: data/ belongs to the server's user.
    docker run --rm --user 0 --entrypoint tar -v "$DEPLOY:/deploy:ro" -w /deploy "$(env_value XIAOZHI_IMAGE)" \
        --exclude=data/.cache -cf - "${items[@]}" | tar -xf - -C "$work/backup" || die "cannot read the deployment's files"
    tar -C "$work" -czf "$out.part" backup && mv "$out.part" "$out"
    step "backup written: $out ($(du -h "$out" | cut -f1))"
}

restore() {
    local file="$1" work
    [[ -f "$file" ]] || die "no backup file $file"
    file="$(cd "$(dirname "$file")" && pwd)/$(basename "$file")"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    tar -xzf "$file" -C "$work" || die "$file is not a backup (cannot unpack it)"
    [[ -d "$work/backup/data" ]] || die "$file is not a backup (no data/ in it)"
    step "stopping the stack"
    "${COMPOSE[@]}" down
    step "restoring data/ $( [[ -d $work/backup/redis/data ]] && echo 'and redis/data')"
    local moved=(data)
    [[ -d "$work/backup/redis/data" ]] && moved+=(redis/data)
    for d in "${moved[@]}"; do
        if [[ -e "$d" ]]; then
            # Moved aside as root: the files belong to the containers' users.
            docker run --rm --user 0 --entrypoint mv -v "$DEPLOY:/deploy" -w /deploy "$(env_value XIAOZHI_IMAGE)" \
                "$d" "$d.before-restore-$stamp" || die "cannot move $d aside"
        fi
        mkdir -p "$(dirname "$d")"
        cp -a "$work/backup/$d" "$d"
    done
    mkdir -p data/restore
    cp "$work"/backup/exports/*.json data/restore/ 2>/dev/null || true
    own_data data
    step "starting"
    "${COMPOSE[@]}" up -d
    wait_healthy 180
    local n=0 item
    for item in data/restore/*.json; do
        [[ -e "$item" ]] || continue
        server data import "/opt/xiaozhi/$item" >/dev/null || die "importing $item failed"
        n=$((n + 1))
    done
    docker run --rm --user 0 --entrypoint rm -v "$DEPLOY/data:/d" "$(env_value XIAOZHI_IMAGE)" -rf /d/restore
    step "restored $file: data/, $( [[ -d $work/backup/redis/data ]] && echo 'Redis, ')$n device export(s) imported"
}

case "${1:-}" in
    restore) restore "${2:?usage: backup.sh restore FILE}" ;;
    --out) backup "${2:?--out needs a file}" ;;
    "") backup "$DEPLOY/backups/xiaozhi-backup-$stamp.tar.gz" ;;
    -h | --help) awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "${BASH_SOURCE[0]}" ;;
    *) die "unknown argument $1 (see --help)" ;;
esac
