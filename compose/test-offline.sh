#!/usr/bin/env bash
# The offline deployment, end to end, with the real Docker engine of this machine (which can pull
# nothing): stand-in base images (tests/offline/base-images.sh), the package script, a
# `docker build --network=none`, the deploy script from the tarball into a scratch directory, and
# then, against the running containers:
#   - deploying again changes nothing; an upgrade over it backs up first and keeps data/
#   - /health answers; OTA hands out our WebSocket URL
#   - a data/.config.yaml change (providers -> a mock OpenAI-compatible server in a container on
#     the stack's network) applies without a restart
#   - the device simulator holds a spoken turn (Silero VAD, Piper TTS and espeak-ng in the image)
#   - a replaced get_time.wasm in the mounted extensions/ answers without a restart
#   - a stop and start of the stack keeps the device's chat history (Redis AOF)
#   - backup.sh's backup restores into a fresh deployment
#   - the embedded-store variant deploys and keeps history across a restart too
#   - the mosquitto variant (MQTT fleet mode) deploys and holds a turn over MQTT + UDP
# It prints the figures of the closing note (image and package size, build, deploy and swap times).
#
# Usage: compose/test-offline.sh          (as root; KEEP=1 leaves the scratch directory and stacks)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export BUILDER_IMAGE=xiaozhi-local/rust:bookworm
export RUNTIME_IMAGE=xiaozhi-local/debian:bookworm-slim
export REDIS_IMAGE=xiaozhi-local/redis:7
export MOSQUITTO_IMAGE=xiaozhi-local/mosquitto:2
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
SERVER_IMAGE="xiaozhi-server:$VERSION"
DEVICE=aa:bb:cc:dd:ee:01
OTA=http://127.0.0.1:8003/xiaozhi/ota/

step() { echo "==> test-offline: $*"; }
fail() {
    echo "test-offline: FAILED: $*" >&2
    exit 1
}
figures=()
figure() {
    figures+=("$1")
    echo "    figure: $1"
}
# The first 400 characters of a file, indented (for failure messages).
excerpt() { head -c 400 "$1" | sed 's/^/      /'; }

command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 ||
    { apt-get install -y -q docker-compose >/dev/null || fail "no docker compose"; }
for port in 8000 8003 1883; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "port $port is in use: the test deploys on the default ports"
    fi
done

work="$(mktemp -d /var/tmp/xiaozhi-offline-test.XXXXXX)"
mock=xiaozhi-offline-test-mock
deployments=()
dockerd_pid=""
cleanup() {
    local status=$?
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "test-offline: KEEP=1: left $work and its stacks running"
        return
    fi
    docker rm -f "$mock" >/dev/null 2>&1 || true
    for d in "${deployments[@]}"; do
        (cd "$d" && docker-compose down -v --remove-orphans >/dev/null 2>&1) || true
    done
    stop_dockerd
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT

# The Docker engine: the machine's own service when it answers (it may still be starting: wait up
# to 60 s); else, as root, a dockerd started here for the test and stopped at its end (SIGTERM,
# 20 s grace, then SIGKILL), so that a machine whose service was not started still runs the test.
stop_dockerd() {
    [[ -n "$dockerd_pid" ]] || return 0
    kill -TERM "$dockerd_pid" 2>/dev/null || return 0
    for _ in $(seq 40); do
        kill -0 "$dockerd_pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL "$dockerd_pid" 2>/dev/null || true
}
docker_up() { docker info >/dev/null 2>&1; }
wait_docker() {
    local seconds=$1
    for _ in $(seq $((seconds * 2))); do
        docker_up && return 0
        [[ -z "$dockerd_pid" ]] || kill -0 "$dockerd_pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
if ! wait_docker 60; then
    ((EUID == 0)) && command -v dockerd >/dev/null && ! pgrep -x dockerd >/dev/null ||
        fail "the Docker engine is not reachable (docker info) and cannot be started here"
    step "starting a Docker engine for the test (the machine's service is not running)"
    dockerd >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    wait_docker 90 || fail "the Docker engine did not start; its log ends with:
$(tail -n 20 "$work/dockerd.log")"
fi
trap 'echo "test-offline: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

step "host tools: simulator and mock providers"
cargo build --quiet -p xiaozhi-server --bin xiaozhi-server -p xiaozhi-e2e --bin mock-openai
# The device simulator, run in the scratch directory (it saves each reply as reply.wav there).
sim() { (cd "$work" && "$ROOT/target/debug/xiaozhi-server" simulate --ota "$OTA" --device-id "$DEVICE" "$@"); }

step "stand-in base images"
tests/offline/base-images.sh

step "package (compose/offline-package.sh)"
started=$SECONDS
compose/offline-package.sh --out "$work/out" | tee "$work/package.log"
figure "package script: $((SECONDS - started)) s, of which docker build --network=none $(sed -n 's/^    built in \([0-9]*\) s.*/\1/p' "$work/package.log") s"
tarball="$(ls "$work"/out/xiaozhi-offline-"$VERSION"-*.tar.gz)"
figure "package: $(basename "$tarball"), $(du -m "$tarball" | cut -f1) MB"
figure "server image: $(docker image inspect -f '{{.Size}}' "$SERVER_IMAGE" | awk '{ printf "%.1f MB", $1 / 1e6 }') (no models)"
docker image inspect -f '{{.Config.User}} {{json .Config.ExposedPorts}} {{json .Config.Healthcheck.Test}}' "$SERVER_IMAGE" |
    grep -q '^xiaozhi {"8000/tcp":{},"8003/tcp":{}} \["CMD","xiaozhi-server","health"\]$' ||
    fail "the image's user, ports or healthcheck are not as built: $(docker image inspect -f '{{.Config.User}} {{json .Config.ExposedPorts}}' "$SERVER_IMAGE")"

step "deploy from the tarball (as carried over through Windows: CRLF line endings)"
mkdir -p "$work/site"
tar -xzf "$tarball" -C "$work/site"
pkg="$(ls -d "$work"/site/xiaozhi-offline-*)"
sed -i 's/$/\r/' "$pkg/offline-deploy.sh" "$pkg/docker-compose.yml" "$pkg/.env"
deploy="$work/deploy"
deployments+=("$deploy")
started=$SECONDS
bash "$pkg/offline-deploy.sh" --dir "$deploy" | tee "$work/deploy.log"
figure "offline-deploy.sh to healthy: $((SECONDS - started)) s (docker load included)"
grep -q "fixed Windows line endings: docker-compose.yml" "$work/deploy.log" || fail "CRLF endings were not fixed"
grep -q "ws://.*:8000/xiaozhi/v1/" "$work/deploy.log" || fail "the deploy script printed no WebSocket URL"
[[ "$(stat -c %u "$deploy/data")" == 10001 ]] || fail "data/ does not belong to the server's user"
started=$SECONDS
bash "$pkg/offline-deploy.sh" --dir "$deploy" >"$work/redeploy.log" || fail "deploying again failed"
figure "offline-deploy.sh again (nothing to change): $((SECONDS - started)) s"
# An upgrade (the deployment says it runs another version): backed up first, data kept.
echo 0.0.9 >"$deploy/VERSION"
echo "# kept across the upgrade" >>"$deploy/data/.config.yaml"
bash "$pkg/offline-deploy.sh" --dir "$deploy" >"$work/upgrade.log" || { tail "$work/upgrade.log"; fail "upgrading"; }
grep -q "upgrading 0.0.9 -> $VERSION: backing up first" "$work/upgrade.log" || fail "the upgrade was not recognised"
compgen -G "$deploy/backups/xiaozhi-backup-*.tar.gz" >/dev/null || fail "the upgrade made no backup"
grep -q "# kept across the upgrade" "$deploy/data/.config.yaml" || fail "the upgrade lost data/.config.yaml"
[[ "$(cat "$deploy/VERSION")" == "$VERSION" ]] || fail "the upgrade did not record the new version"

step "health and OTA"
[[ "$(curl -fsS http://127.0.0.1:8003/health)" == '{"status":"ok"}' ]] || fail "/health"
curl -fsS -X POST "$OTA" -H "Device-Id: $DEVICE" -H 'Client-Id: 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed' \
    -H 'Content-Type: application/json' \
    -d '{"application":{"version":"1.0.0"},"board":{"type":"test"}}' >"$work/ota.json"
grep -q '"url":"ws://127.0.0.1:8000/xiaozhi/v1/"' "$work/ota.json" || { excerpt "$work/ota.json"; fail "OTA did not give our WebSocket URL"; }

step "mock providers in a container on the stack's network; data/.config.yaml points at them"
server_id() { (cd "$1" && docker-compose ps -q xiaozhi-server); }
network_of() { docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(server_id "$1")"; }
docker run -d --name "$mock" --network "$(network_of "$deploy")" --network-alias mock \
    -v "$ROOT/target/debug/mock-openai:/usr/local/bin/mock-openai:ro" --entrypoint mock-openai \
    "$SERVER_IMAGE" 9000 --bind 0.0.0.0 --tool time=get_time >/dev/null
cat >>"$deploy/data/.config.yaml" <<'YAML'

# compose/test-offline.sh: the providers are a mock OpenAI-compatible server; Piper speaks.
selected_module:
  ASR: MockASR
  LLM: MockLLM
ASR:
  MockASR:
    type: openai
    base_url: http://mock:9000/v1/audio/transcriptions
    model_name: mock-asr
    api_key: test
LLM:
  MockLLM:
    type: openai
    base_url: http://mock:9000/v1
    model_name: mock-llm
    api_key: test
YAML
# The change applies to new sessions without a restart: wait for a turn answered by the mock.
started=$SECONDS
until sim --text "hello" >"$work/hello.log" 2>&1 && grep -q "sentence: .*sunny" "$work/hello.log"; do
    ((SECONDS - started < 60)) || { excerpt "$work/hello.log"; fail "the config change did not apply within 60 s"; }
    sleep 1
done
figure "data/.config.yaml change to a turn answered by the new providers: $((SECONDS - started)) s"

step "a spoken turn (VAD, Piper TTS, Opus both ways)"
espeak-ng -w "$work/question.wav" "What is the weather like today?"
sim --wav "$work/question.wav" --out "$work/reply.wav" >"$work/spoken.log" 2>&1 ||
    { excerpt "$work/spoken.log"; fail "the spoken turn failed"; }
grep -q "stt: What is the weather like today?" "$work/spoken.log" || { excerpt "$work/spoken.log"; fail "no transcript"; }
grep -q "sentence: .*sunny" "$work/spoken.log" || { excerpt "$work/spoken.log"; fail "no reply sentence"; }
reply_ms="$(sed -n 's/^saved .* (\([0-9]*\) ms at .*/\1/p' "$work/spoken.log")"
((${reply_ms:-0} > 1000)) || { excerpt "$work/spoken.log"; fail "the reply audio is too short (${reply_ms:-0} ms)"; }
echo "    spoken reply: $reply_ms ms of audio"

step "extension hot swap: a new get_time.wasm in the mounted extensions/"
sim --text "what time is it" >"$work/tool1.log" 2>&1 || { excerpt "$work/tool1.log"; fail "tool turn"; }
grep -q "sentence: The tool says" "$work/tool1.log" || { excerpt "$work/tool1.log"; fail "get_time was not called"; }
grep -q "V2X" "$work/tool1.log" && fail "the first answer is already the new version"
variant="$work/variant/get_time"
mkdir -p "$(dirname "$variant")"
cp -R extensions/get_time "$variant"
rm -f "$variant"/*.wasm
# The copy lives elsewhere: its path dependency on the guest SDK must point back here.
sed -i "s|path = \"../sdk\"|path = \"$ROOT/extensions/sdk\"|" "$variant/Cargo.toml"
sed -i 's|"Date: |"Date V2X: |; s|当前日期：|当前日期V2X：|' "$variant/src/tool.rs"
(( $(grep -c 'V2X' "$variant/src/tool.rs") >= 2 )) || fail "could not make the get_time variant"
extensions/build.sh "$variant" >"$work/variant-build.log" 2>&1 || { tail -20 "$work/variant-build.log"; fail "building the variant"; }
cp "$variant/get_time.wasm" "$deploy/extensions/get_time/.get_time.wasm.new"
since="$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)"
started_ms=$(date +%s%3N)
mv "$deploy/extensions/get_time/.get_time.wasm.new" "$deploy/extensions/get_time/get_time.wasm"
# The server logs each (re)load; the moment the new file is live is its next get_time load line.
until docker logs --since "$since" "$(server_id "$deploy")" 2>&1 | grep -q "extension loaded.*get_time"; do
    (($(date +%s%3N) - started_ms < 30000)) || fail "get_time was not reloaded within 30 s"
    sleep 0.05
done
figure "extension file replaced to the new version loaded in the container: $(($(date +%s%3N) - started_ms)) ms (the server polls every 500 ms)"
sim --text "what time is it" >"$work/tool2.log" 2>&1 || { excerpt "$work/tool2.log"; fail "second tool turn"; }
grep -q "V2X" "$work/tool2.log" || { excerpt "$work/tool2.log"; fail "the new get_time did not answer"; }

step "stop and start the stack: the chat history stays"
history_of() { (cd "$1" && docker-compose exec -T xiaozhi-server xiaozhi-server data export "$DEVICE"); }
history_of "$deploy" >"$work/history-before.json"
grep -q "What is the weather like today?" "$work/history-before.json" || { excerpt "$work/history-before.json"; fail "no history"; }
(cd "$deploy" && docker-compose stop >/dev/null 2>&1 && docker-compose start >/dev/null 2>&1)
(cd "$deploy" && source ./common.sh && find_compose && wait_healthy 120)
history_of "$deploy" >"$work/history-after.json"
cmp -s "$work/history-before.json" "$work/history-after.json" ||
    { diff "$work/history-before.json" "$work/history-after.json" | head; fail "the history changed across the restart"; }

step "backup, then restore into a fresh deployment"
bash "$deploy/backup.sh" --out "$work/backup.tar.gz" | tee "$work/backup.log"
docker network disconnect "$(network_of "$deploy")" "$mock"
(cd "$deploy" && docker-compose down >/dev/null 2>&1)
deploy2="$work/restored"
deployments+=("$deploy2")
bash "$pkg/offline-deploy.sh" --dir "$deploy2" >"$work/deploy2.log" || { tail "$work/deploy2.log"; fail "second deployment"; }
bash "$deploy2/backup.sh" restore "$work/backup.tar.gz" | tee "$work/restore.log"
docker network connect --alias mock "$(network_of "$deploy2")" "$mock"
history_of "$deploy2" >"$work/history-restored.json"
cmp -s "$work/history-before.json" "$work/history-restored.json" ||
    { diff "$work/history-before.json" "$work/history-restored.json" | head; fail "the restored history differs"; }
sim --text "hello again" >"$work/restored-turn.log" 2>&1 && grep -q "sentence: .*sunny" "$work/restored-turn.log" ||
    { excerpt "$work/restored-turn.log"; fail "no turn after the restore (the restored settings should name the mock)"; }
docker network disconnect "$(network_of "$deploy2")" "$mock"
(cd "$deploy2" && docker-compose down >/dev/null 2>&1)

step "the embedded-store variant"
deploy3="$work/embedded"
deployments+=("$deploy3")
bash "$pkg/offline-deploy.sh" --dir "$deploy3" --embedded >"$work/deploy3.log" || { tail "$work/deploy3.log"; fail "embedded deployment"; }
grep -q "docker-compose.embedded.yml (embedded store)" "$work/deploy3.log" || fail "the embedded variant was not selected"
[[ -z "$(cd "$deploy3" && docker-compose ps -q redis 2>/dev/null)" ]] || fail "the embedded variant started Redis"
docker network connect --alias mock "$(network_of "$deploy3")" "$mock"
sed -n '/^# compose\/test-offline.sh/,$p' "$deploy/data/.config.yaml" >>"$deploy3/data/.config.yaml"
started=$SECONDS
until sim --text "hello embedded" >"$work/embedded.log" 2>&1 && grep -q "sentence: .*sunny" "$work/embedded.log"; do
    ((SECONDS - started < 60)) || { excerpt "$work/embedded.log"; fail "no turn on the embedded variant"; }
    sleep 1
done
(cd "$deploy3" && docker-compose restart >/dev/null 2>&1)
(cd "$deploy3" && source ./common.sh && find_compose && wait_healthy 120)
# (Into a file first: with pipefail, `grep -q` leaving a pipe early can fail the writer.)
history_of "$deploy3" >"$work/embedded-history.json" || fail "no export from the embedded variant"
grep -q "hello embedded" "$work/embedded-history.json" ||
    { excerpt "$work/embedded-history.json"; fail "the embedded store lost the history across a restart"; }
docker network disconnect "$(network_of "$deploy3")" "$mock"
(cd "$deploy3" && docker-compose down >/dev/null 2>&1)

step "the mosquitto variant (MQTT fleet mode)"
deploy4="$work/mosquitto"
deployments+=("$deploy4")
bash "$pkg/offline-deploy.sh" --dir "$deploy4" --mosquitto >"$work/deploy4.log" || { tail "$work/deploy4.log"; fail "mosquitto deployment"; }
grep -q "docker-compose.yml:docker-compose.mosquitto.yml" "$work/deploy4.log" || fail "the mosquitto variant was not selected"
[[ -n "$(cd "$deploy4" && docker-compose ps -q mosquitto 2>/dev/null)" ]] || fail "the mosquitto variant started no broker"
grep -q "broker: mqtt://mosquitto:1883" "$deploy4/data/.config.yaml" || fail "the fleet keys were not written"
docker network connect --alias mock "$(network_of "$deploy4")" "$mock"
sed -n '/^# compose\/test-offline.sh/,$p' "$deploy/data/.config.yaml" >>"$deploy4/data/.config.yaml"
(cd "$deploy4" && docker-compose restart xiaozhi-server >/dev/null 2>&1)
(cd "$deploy4" && source ./common.sh && find_compose && wait_healthy 120)
# mosquitto delivers only to subscribers: the simulator subscribes, as firmware before 2025 did.
started=$SECONDS
until sim --transport mqtt --subscribe --text "hello broker" >"$work/mosquitto.log" 2>&1 &&
    grep -q "sentence: .*sunny" "$work/mosquitto.log"; do
    ((SECONDS - started < 60)) || { excerpt "$work/mosquitto.log"; fail "no turn over MQTT + UDP through mosquitto"; }
    sleep 1
done
figure "mosquitto variant: a spoken reply over MQTT + UDP through the broker $((SECONDS - started)) s after the restart"

step "passed"
printf '    %s\n' "${figures[@]}"
