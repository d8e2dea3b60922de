#!/usr/bin/env bash
# docker/test.sh: builds the runtime image of docker/Dockerfile from a binary built on this host
# and checks it against a running container. Run as root from anywhere:
#
#   cargo build --release -p warren-server -p warren-perf && docker/test.sh
#
# Needs podman (rootful; `apt-get install podman runc debootstrap`), python3 with pika
# (tests/interop/requirements.txt) and, the first time, debootstrap and Debian's archive: the
# base image for the stage that assembles the runtime tree is made with
# `debootstrap --variant=minbase bookworm` (kept in $WARREN_BASE_DIR, default
# /var/tmp/warren-base, and imported once as localhost/warren-base:bookworm). No registry is
# contacted; the runtime image itself is FROM scratch.
#
# Environment:
#   WARREN_TEST_ENGINE  podman (default) or docker. With docker the same steps run against the
#                       daemon (health is polled from `docker inspect`); not tried here, as our
#                       machines have no Docker daemon.
#   WARREN_TEST_PORT    host port for AMQP (default: the first free block of four from 25672).
#   WARREN_TEST_NETWORK host (default: --network host, the broker listens on WARREN_TEST_PORT
#                       itself) or publish (bridge network, `-p 127.0.0.1:PORT:5672`; clients
#                       then come from outside the container's loopback).
#   WARREN_BIN, WARREN_PERF_BIN  the binaries (default target/release/warren, warren-perf).
#   WARREN_TEST_KEEP=1  keep the test image afterwards.
#
# Checks that need features not built yet (definitions, management API, metrics) detect them
# from `warren --help` and print SKIP until they are there.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

ENGINE="${WARREN_TEST_ENGINE:-podman}"
# The first block of four free ports from 25672 up (a local RabbitMQ on 5673 holds 25673, its
# distribution port), unless WARREN_TEST_PORT says which.
block_free() { for p in "$1" $(($1 + 1)) $(($1 + 2)) $(($1 + 3)); do
    ss -ltn "sport = :$p" 2>/dev/null | grep -q LISTEN && return 1; done; return 0; }
PORT="${WARREN_TEST_PORT:-25672}"
if [ -z "${WARREN_TEST_PORT:-}" ]; then
    while ! block_free "$PORT"; do PORT=$((PORT + 4)); done
fi
NETWORK="${WARREN_TEST_NETWORK:-host}"
MGMT_PORT=$((PORT + 1))
METRICS_PORT=$((PORT + 2))
TLS_PORT=$((PORT + 3))
# The ports inside the container, and how the host reaches them.
case "$NETWORK" in
host)
    C_PORT="$PORT" C_MGMT="$MGMT_PORT" C_METRICS="$METRICS_PORT" C_TLS="$TLS_PORT"
    NET_ARGS=(--network host)
    ;;
publish)
    C_PORT=5672 C_MGMT=15672 C_METRICS=15692 C_TLS=5671
    NET_ARGS=(-p "127.0.0.1:$PORT:5672" -p "127.0.0.1:$MGMT_PORT:15672"
        -p "127.0.0.1:$METRICS_PORT:15692" -p "127.0.0.1:$TLS_PORT:5671")
    ;;
*) echo "WARREN_TEST_NETWORK must be host or publish" >&2; exit 2 ;;
esac
BIN="${WARREN_BIN:-$ROOT/target/release/warren}"
PERF="${WARREN_PERF_BIN:-$ROOT/target/release/warren-perf}"
BASE_DIR="${WARREN_BASE_DIR:-/var/tmp/warren-base}"
BASE_IMAGE="localhost/warren-base:bookworm"
IMAGE="localhost/warren:test"
NAME="warren-test-$$"
VOLUME="warren-test-$$-data"
USER_NAME="app"
USER_PASS="docker-test-pw"
STOP_TIMEOUT=30
STARTED=$(date +%s)

WORK="$(mktemp -d /tmp/warren-docker-test.XXXXXX)"
HOLD_PID=""

step() { printf '\n== [%3d s] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
ok() { printf 'ok   %s\n' "$*"; }
skip() { printf 'SKIP %s\n' "$*"; }
die() {
    printf 'FAIL %s\n' "$*" >&2
    if eng container inspect "$NAME" >/dev/null 2>&1; then
        printf -- '--- container log (last 30 lines)\n' >&2
        eng logs "$NAME" 2>&1 | tail -30 >&2 || true
    fi
    exit 1
}

# The engine, with the options this sandbox needs: runc and cgroupfs (no systemd), explicit
# ulimits (the defaults try to raise limits we may not), host networking.
NOFILE="$(ulimit -Hn)"
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ]; then NOFILE=65536; fi
NPROC=4096
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")
eng() {
    if [ "$ENGINE" = podman ]; then
        podman --runtime runc --cgroup-manager=cgroupfs "$@"
    else
        docker "$@"
    fi
}

cleanup() {
    set +e
    [ -n "$HOLD_PID" ] && kill "$HOLD_PID" 2>/dev/null
    eng rm -f -t 0 "$NAME" >/dev/null 2>&1 || eng rm -f "$NAME" >/dev/null 2>&1
    eng volume rm -f "$VOLUME" >/dev/null 2>&1
    [ "${WARREN_TEST_KEEP:-0}" = 1 ] || eng rmi "$IMAGE" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v "$ENGINE" >/dev/null || die "$ENGINE is not installed"
[ -x "$BIN" ] || die "no binary at $BIN (cargo build --release -p warren-server)"
[ -x "$PERF" ] || die "no binary at $PERF (cargo build --release -p warren-perf)"
python3 -c 'import pika' 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
client() { timeout 120 python3 "$ROOT/docker/clients.py" "$1" --port "$PORT" \
    --user "$USER_NAME" --password "$USER_PASS" "${@:2}"; }
# Capture first, then match: with pipefail, `cmd | grep -q` fails whenever grep exits before
# cmd has written everything (cmd dies of SIGPIPE).
HELP_TEXT=""
has_feature() { [ -n "$HELP_TEXT" ] || HELP_TEXT=$("$BIN" --help); [[ $HELP_TEXT == *"$1"* ]]; }

# ---------------------------------------------------------------------------------------------
step "compose files"
if command -v promtool >/dev/null; then
    promtool check config docker/prometheus.yml >/dev/null || die "promtool check config docker/prometheus.yml"
    ok "docker/prometheus.yml passes promtool check config"
else
    skip "docker/prometheus.yml: no promtool here (Debian's prometheus package has it)"
fi

step "base image ($BASE_IMAGE)"
if eng image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    ok "reusing $BASE_IMAGE"
else
    if [ ! -x "$BASE_DIR/bin/sh" ]; then
        command -v debootstrap >/dev/null || die "debootstrap is not installed"
        rm -rf "$BASE_DIR.tmp"
        debootstrap --variant=minbase bookworm "$BASE_DIR.tmp" http://deb.debian.org/debian \
            >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
        rm -rf "$BASE_DIR"
        mv "$BASE_DIR.tmp" "$BASE_DIR"
    fi
    tar -C "$BASE_DIR" -c . | eng import - "$BASE_IMAGE" >/dev/null
    ok "imported $BASE_DIR as $BASE_IMAGE"
fi

step "runtime image ($IMAGE) from $BIN"
mkdir -p "$WORK/context"
strip -o "$WORK/context/warren" "$BIN" 2>/dev/null || cp "$BIN" "$WORK/context/warren"
BUILD=(build -f "$ROOT/docker/Dockerfile" --build-arg BINARY_FROM=prebuilt
    --build-arg "PREBUILT_BASE=$BASE_IMAGE" --network host "${ULIMITS[@]}" -t "$IMAGE")
# podman: Docker image format (OCI has no HEALTHCHECK); no intermediate images left behind.
[ "$ENGINE" = podman ] && BUILD+=(--format docker --layers=false)
eng "${BUILD[@]}" "$WORK/context" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; die "image build"; }
size=$(eng image inspect "$IMAGE" --format '{{.Size}}')
ok "built: $(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }') ($size bytes)"
cfg=$(eng image inspect "$IMAGE" --format \
    '{{.Config.User}}|{{json .Config.ExposedPorts}}|{{json .Config.Volumes}}|{{.Config.StopSignal}}|{{json .Config.Healthcheck.Test}}')
IFS='|' read -r img_user img_ports img_volumes img_stop img_health <<<"$cfg"
[ "$img_user" = "10001:10001" ] || die "image user is '$img_user', expected 10001:10001"
for p in 5672 5671 15672 15692; do
    [[ $img_ports == *"\"$p/tcp\""* ]] || die "port $p not exposed: $img_ports"
done
[[ $img_volumes == *'"/var/lib/warren"'* ]] || die "no /var/lib/warren volume: $img_volumes"
[ "$img_stop" = SIGTERM ] || die "stop signal is '$img_stop'"
[[ $img_health == *'"/usr/local/bin/warren","healthcheck"'* ]] || die "healthcheck is $img_health"
ok "user 10001:10001, ports 5672 5671 15672 15692, volume /var/lib/warren, SIGTERM, healthcheck"

# ---------------------------------------------------------------------------------------------
step "start: config from a mounted file and the environment"
mkdir -p "$WORK/etc"
# The file sets the port and channel_max, and says text logs; the environment says json logs
# (environment beats file) and gives the user through RabbitMQ's variables.
cat >"$WORK/etc/warren.toml" <<EOF
[amqp]
port = $C_PORT
channel_max = 99
[log]
format = "text"
EOF
cat >"$WORK/etc/definitions.json" <<'EOF'
{
  "vhosts": [{"name": "/"}],
  "queues": [{"name": "from-definitions", "vhost": "/", "durable": true,
              "auto_delete": false, "arguments": {}}],
  "exchanges": [], "bindings": [], "users": [], "permissions": []
}
EOF
# A CA and a server certificate for localhost (TLS on 5671 inside the container).
TLS_ARGS=()
if command -v openssl >/dev/null; then
    mkdir -p "$WORK/etc/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=warren test CA" \
        -keyout "$WORK/ca.key" -out "$WORK/etc/tls/ca.pem" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$WORK/etc/tls/key.pem" -out "$WORK/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost\n' >"$WORK/san.ext"
    openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/etc/tls/ca.pem" -CAkey "$WORK/ca.key" \
        -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/etc/tls/cert.pem" >/dev/null 2>&1
    chmod 0755 "$WORK/etc/tls"
    chmod 0644 "$WORK/etc/tls/"*
    TLS_ARGS=(-e WARREN_TLS_PORT="$C_TLS" -e WARREN_TLS_CERT=/etc/warren/tls/cert.pem
        -e WARREN_TLS_KEY=/etc/warren/tls/key.pem)
fi
chmod 0644 "$WORK/etc/"*.toml "$WORK/etc/"*.json
eng volume create "$VOLUME" >/dev/null
eng run -d --name "$NAME" "${NET_ARGS[@]}" "${ULIMITS[@]}" \
    --stop-timeout "$STOP_TIMEOUT" \
    -v "$VOLUME:/var/lib/warren" \
    -v "$WORK/etc:/etc/warren:ro" \
    -e WARREN_CONFIG=/etc/warren/warren.toml \
    -e WARREN_LOAD_DEFINITIONS=/etc/warren/definitions.json \
    -e WARREN_MANAGEMENT_PORT="$C_MGMT" \
    -e WARREN_PROMETHEUS_PORT="$C_METRICS" \
    -e WARREN_LOG_FORMAT=json \
    "${TLS_ARGS[@]}" \
    -e RABBITMQ_DEFAULT_USER="$USER_NAME" \
    -e RABBITMQ_DEFAULT_PASS="$USER_PASS" \
    -e RABBITMQ_DEFAULT_VHOST=/ \
    "$IMAGE" >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; die "run"; }

# Becomes healthy through the image's HEALTHCHECK (which finds the port in the mounted file).
wait_healthy() {
    local deadline=$(($(date +%s) + 30)) status=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if [ "$ENGINE" = podman ]; then
            # No systemd here to schedule the checks: run them as the timer would. A fresh
            # check must pass (the recorded status may be left from before a restart).
            eng healthcheck run "$NAME" >/dev/null 2>&1 || { sleep 0.5; continue; }
        fi
        status=$(eng inspect "$NAME" --format '{{.State.Health.Status}}' 2>/dev/null || true)
        [ "$status" = healthy ] && return 0
        sleep 0.5
    done
    die "container not healthy within 30 s (status: $status)"
}
wait_healthy
ok "healthy"

pid=$(eng inspect "$NAME" --format '{{.State.Pid}}')
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 10001 ] || die "broker runs as uid $uid"
ok "broker process (host pid $pid) runs as uid 10001, not root"

info=$(client info) || die "pika cannot connect as $USER_NAME (RABBITMQ_DEFAULT_USER)"
[[ $info == *'"channel_max": 99'* ]] || die "channel_max from the mounted file not in effect: $info"
[[ $info == *'"warren_version": "'[0-9]* ]] || die "not Warren: $info"
ok "pika connects on $PORT ($NETWORK; $C_PORT in the file) as $USER_NAME (RABBITMQ_DEFAULT_USER/PASS); channel_max 99 (file)"
eng logs "$NAME" >"$WORK/logs.txt" 2>&1 || true
grep '"listening"' "$WORK/logs.txt" | grep -q '^{' || die "logs are not JSON (WARREN_LOG_FORMAT)"
ok "logs are JSON: WARREN_LOG_FORMAT beats the file's text"

perf=$("$PERF" drain --uri "amqp://$USER_NAME:$USER_PASS@127.0.0.1:$PORT/%2f" -C 2000 \
    -f persistent -c 100 -u docker-perf --json) || die "warren-perf (lapin) failed"
python3 -c '
import json, sys
s = json.loads(sys.argv[1])
bad = {k: s[k] for k in ("sent", "confirmed", "received_total") if s[k] != 2000}
bad.update({k: s[k] for k in ("missing", "duplicates", "nacked") if s[k] != 0})
sys.exit("warren-perf: %r" % bad if bad else 0)' "$perf" || die "lapin drain mismatch"
ok "warren-perf (lapin): 2000 persistent messages confirmed and drained exactly once"

if has_feature load-definitions; then
    client queue-exists --queue from-definitions || die "definitions not loaded"
    ok "queue from the mounted definitions (WARREN_LOAD_DEFINITIONS) exists"
else
    skip "definitions: this warren has no --load-definitions yet (issue 13)"
fi
if has_feature WARREN_MANAGEMENT_PORT; then
    code=$(curl -s -o "$WORK/overview.json" -w '%{http_code}' -u "$USER_NAME:$USER_PASS" \
        "http://127.0.0.1:$MGMT_PORT/api/overview") || true
    [ "$code" = 200 ] || die "management API: GET /api/overview answered $code"
    ok "management API answers on $MGMT_PORT"
else
    skip "management API: this warren has no WARREN_MANAGEMENT_PORT yet (issue 14)"
fi
if has_feature WARREN_PROMETHEUS_PORT; then
    curl -sf -o "$WORK/metrics.txt" "http://127.0.0.1:$METRICS_PORT/metrics" \
        && grep -q '^# TYPE' "$WORK/metrics.txt" \
        || die "metrics: no Prometheus text on $METRICS_PORT/metrics"
    ok "Prometheus metrics answer on $METRICS_PORT"
else
    skip "metrics: this warren has no WARREN_PROMETHEUS_PORT yet (issue 14)"
fi
if [ ${#TLS_ARGS[@]} -gt 0 ]; then
    tls_info=$(client info --port "$TLS_PORT" --tls-ca "$WORK/etc/tls/ca.pem") \
        || die "pika cannot connect over TLS on $TLS_PORT"
    [[ $tls_info == *'"warren_version": "'[0-9]* ]] || die "TLS: not Warren: $tls_info"
    ok "pika connects over TLS on $TLS_PORT ($C_TLS in the container; certificate mounted)"
else
    skip "TLS: no openssl here to make a test certificate"
fi

# ---------------------------------------------------------------------------------------------
step "durable queue and persistent messages survive stop + start"
client publish --queue docker-durable --count 200 || die "publish"
client hold --out "$WORK/hold.json" --timeout 60 &
HOLD_PID=$!
for _ in $(seq 100); do grep -q ready "$WORK/hold.json" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$WORK/hold.json" || die "holding client did not connect"
t0=$(date +%s.%N)
eng stop -t "$STOP_TIMEOUT" "$NAME" >/dev/null 2>&1
t1=$(date +%s.%N)
wait "$HOLD_PID" || true
HOLD_PID=""
stop_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
exit_code=$(eng inspect "$NAME" --format '{{.State.ExitCode}}')
[ "$exit_code" = 0 ] || die "exit code $exit_code after stop"
awk -v s="$stop_s" 'BEGIN { exit !(s < 10) }' || die "stop took ${stop_s}s (timeout ${STOP_TIMEOUT}s)"
ok "stop: exit 0 after ${stop_s}s (stop timeout ${STOP_TIMEOUT}s)"
expected='{"code": 320, "text": "CONNECTION_FORCED - broker forced connection closure with reason '"'"'shutdown'"'"'"}'
[ "$(cat "$WORK/hold.json")" = "$expected" ] || die "client saw $(cat "$WORK/hold.json")"
ok "client got 320 CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
eng start "$NAME" >/dev/null 2>&1
wait_healthy
client verify --queue docker-durable --count 200 || die "after restart"
ok "200 persistent messages still there after restart"

step "and survive kill -9"
client publish --queue docker-durable --start 200 --count 200 || die "publish"
eng kill -s KILL "$NAME" >/dev/null
for _ in $(seq 50); do
    [ "$(eng inspect "$NAME" --format '{{.State.Running}}')" = false ] && break
    sleep 0.1
done
[ "$(eng inspect "$NAME" --format '{{.State.Running}}')" = false ] || die "still running after KILL"
eng start "$NAME" >/dev/null 2>&1
wait_healthy
client verify --queue docker-durable --count 400 --consume || die "after kill -9"
ok "all 400 confirmed persistent messages there, in order, after kill -9"
vol_uid=$(eng volume inspect "$VOLUME" --format '{{.Mountpoint}}' | xargs stat -c %u)
[ "$vol_uid" = 10001 ] || die "data volume owned by uid $vol_uid"
ok "data volume owned by uid 10001"

step "done in $(($(date +%s) - STARTED)) s"
