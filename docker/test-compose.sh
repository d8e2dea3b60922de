#!/usr/bin/env bash
# docker/test-compose.sh: runs docker/compose.yaml for real under podman-compose and checks it.
# Run as root from anywhere:
#
#   cargo build --release -p warren-server && docker/test-compose.sh
#
# Needs rootful podman (`apt-get install podman runc`), podman-compose (`pip install
# podman-compose`), python3 with pika, curl, and the base image of docker/test.sh
# (localhost/warren-base:bookworm; made here too if missing, with debootstrap). The image under
# test is built from a host binary, as docker/test.sh does, and named to compose through
# WARREN_IMAGE; compose's `build:` (from source) is docker/test-build.sh's part.
#
# Checks: the service becomes healthy (the compose healthcheck), pika works on the published
# AMQP port as the compose file's default user, a definitions file mounted through an override
# file (as a user would uncomment) is loaded, the management API and the metrics endpoint answer
# on their published ports, and a durable queue's persistent messages survive `down` (without
# -v: the named volume stays) + `up`. Then docker/compose.monitoring.yaml is merged and checked
# with `podman-compose config`, docker/prometheus.yml with promtool (if installed), and, if this
# host has a prometheus binary (Debian's prometheus package), the two files are run together
# with an image made of it: Prometheus must report the target warren:15692 up.
#
# Podman needs, on this kind of machine (no systemd, limited privileges): runc, cgroupfs and
# explicit ulimits. They are given by a containers.conf (CONTAINERS_CONF) written here, so
# every podman call podman-compose makes gets them; but a container that sets any ulimit (the
# compose file sets nofile) gets podman's defaults for the others, so nproc and nofile are also
# passed to `podman create` (--podman-run-args). podman-compose 1.6 ignores
# `depends_on: condition: service_healthy` with podman 4.3 (it says so), so the monitoring run
# only shows that Prometheus finds and scrapes Warren, not the start order.
#
# Environment:
#   WARREN_TEST_PORT  first of four host ports: AMQP, AMQPS, management, metrics (default 21000).
#   WARREN_BIN        the binary (default target/release/warren).
#   WARREN_TEST_KEEP=1  keep the test image afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

PORT="${WARREN_TEST_PORT:-21000}"
BIN="${WARREN_BIN:-$ROOT/target/release/warren}"
BASE_DIR="${WARREN_BASE_DIR:-/var/tmp/warren-base}"
BASE_IMAGE="localhost/warren-base:bookworm"
IMAGE="localhost/warren:compose-test"
PROM_IMAGE="localhost/warren-test-prometheus:local"
PROMETHEUS_BIN="${PROMETHEUS_BIN:-/usr/bin/prometheus}"
HEALTH_PID=""
PROJECT="warren-compose-test-$$"
PROJECT_BASE="$PROJECT"
USER_NAME="compose-app"
USER_PASS="compose-test-pw"
STARTED=$(date +%s)
WORK="$(mktemp -d /tmp/warren-compose-test.XXXXXX)"

step() { printf '\n== [%3d s] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
ok() { printf 'ok   %s\n' "$*"; }
skip() { printf 'SKIP %s\n' "$*"; }
die() {
    printf 'FAIL %s\n' "$*" >&2
    if [ -n "${CONTAINER:-}" ]; then
        printf -- '--- container log (last 30 lines)\n' >&2
        podman logs "$CONTAINER" 2>&1 | tail -30 >&2 || true
    fi
    exit 1
}

NOFILE="$(ulimit -Hn)"
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ]; then NOFILE=65536; fi
cat >"$WORK/containers.conf" <<EOC
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=4096:4096"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOC
export CONTAINERS_CONF="$WORK/containers.conf"

# What the compose file interpolates.
export WARREN_IMAGE="$IMAGE" WARREN_NOFILE="$NOFILE"
export WARREN_DEFAULT_USER="$USER_NAME" WARREN_DEFAULT_PASS="$USER_PASS"
export WARREN_HOST_ADDR=127.0.0.1
export WARREN_HOST_AMQP_PORT="$PORT" WARREN_HOST_AMQPS_PORT=$((PORT + 1))
export WARREN_HOST_MANAGEMENT_PORT=$((PORT + 2)) WARREN_HOST_PROMETHEUS_PORT=$((PORT + 3))
# Never the caller's: these name the broker's own listeners, and are not passed in anyway.
unset WARREN_MANAGEMENT_PORT WARREN_PROMETHEUS_PORT WARREN_LOAD_DEFINITIONS WARREN_CONFIG

# compose.yaml plus an override mounting a definitions file (what the commented lines in
# compose.yaml describe). Compose resolves relative paths against the first file's directory,
# so the override names the file by absolute path.
mkdir -p "$WORK/etc"
cat >"$WORK/etc/definitions.json" <<'EOD'
{
  "vhosts": [{"name": "/"}],
  "queues": [{"name": "compose-from-definitions", "vhost": "/", "durable": true,
              "auto_delete": false, "arguments": {}}],
  "exchanges": [], "bindings": [], "users": [], "permissions": []
}
EOD
chmod 0755 "$WORK" "$WORK/etc"
chmod 0644 "$WORK/etc/definitions.json"
cat >"$WORK/override.yaml" <<EOO
services:
  warren:
    environment:
      WARREN_LOAD_DEFINITIONS: /etc/warren/definitions.json
    volumes:
      - $WORK/etc/definitions.json:/etc/warren/definitions.json:ro
EOO
RUN_ARGS="--ulimit nproc=4096:4096 --ulimit nofile=$NOFILE:$NOFILE"
compose() { podman-compose --podman-run-args "$RUN_ARGS" -p "$PROJECT" -f docker/compose.yaml -f "$WORK/override.yaml" "$@"; }

cleanup() {
    set +e
    [ -n "$HEALTH_PID" ] && kill "$HEALTH_PID" 2>/dev/null
    compose -f docker/compose.monitoring.yaml down -v -t 5 >/dev/null 2>&1
    for p in "$PROJECT_BASE" "$PROJECT_BASE-mon"; do
        for c in $(podman ps -aq --filter "label=io.podman.compose.project=$p"); do
            podman rm -f -t 0 "$c" >/dev/null 2>&1
        done
        podman volume rm -f "${p}_warren-data" "${p}_prometheus-data" >/dev/null 2>&1
        podman network rm -f "${p}_default" >/dev/null 2>&1
        podman pod rm -f "pod_$p" >/dev/null 2>&1
    done
    [ "${WARREN_TEST_KEEP:-0}" = 1 ] || podman rmi "$IMAGE" "$PROM_IMAGE" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v podman >/dev/null || die "podman is not installed"
command -v podman-compose >/dev/null || die "podman-compose is not installed (pip install podman-compose)"
[ -x "$BIN" ] || die "no binary at $BIN (cargo build --release -p warren-server)"
python3 -c 'import pika' 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
client() { timeout 120 python3 "$ROOT/docker/clients.py" "$1" --port "$PORT" \
    --user "$USER_NAME" --password "$USER_PASS" "${@:2}"; }

# ---------------------------------------------------------------------------------------------
step "compose files: podman-compose config, promtool"
# podman-compose prints its version on stderr; the merged file on stdout.
podman-compose -f docker/compose.yaml -f docker/compose.monitoring.yaml config \
    >"$WORK/monitoring.yaml" 2>"$WORK/config.err" || { cat "$WORK/config.err"; die "compose config"; }
for want in 'image: prom/prometheus' 'condition: service_healthy' "image: $IMAGE" 'warren-data' \
    'prometheus-data'; do
    grep -q -- "$want" "$WORK/monitoring.yaml" || die "merged monitoring config lacks '$want'"
done
ok "compose.yaml + compose.monitoring.yaml merge (prometheus waits for warren healthy)"
if command -v promtool >/dev/null; then
    promtool check config docker/prometheus.yml >/dev/null || die "promtool check config docker/prometheus.yml"
    ok "docker/prometheus.yml passes promtool check config"
else
    skip "docker/prometheus.yml: no promtool here (Debian's prometheus package has it)"
fi
# Without the password the file refuses to interpolate (the :? guard).
if env -u WARREN_DEFAULT_PASS podman-compose -f docker/compose.yaml config >/dev/null 2>&1; then
    die "compose config passed without WARREN_DEFAULT_PASS"
fi
ok "compose.yaml refuses to run without WARREN_DEFAULT_PASS"

step "image $IMAGE from $BIN"
if ! podman image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ ! -x "$BASE_DIR/bin/sh" ]; then
        command -v debootstrap >/dev/null || die "debootstrap is not installed"
        rm -rf "$BASE_DIR.tmp"
        debootstrap --variant=minbase bookworm "$BASE_DIR.tmp" http://deb.debian.org/debian \
            >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
        mv "$BASE_DIR.tmp" "$BASE_DIR"
    fi
    tar -C "$BASE_DIR" -c . | podman import - "$BASE_IMAGE" >/dev/null
fi
mkdir -p "$WORK/context"
strip -o "$WORK/context/warren" "$BIN" 2>/dev/null || cp "$BIN" "$WORK/context/warren"
podman build -f docker/Dockerfile --build-arg BINARY_FROM=prebuilt \
    --build-arg "PREBUILT_BASE=$BASE_IMAGE" --network host --format docker --layers=false \
    -t "$IMAGE" "$WORK/context" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; die "image build"; }
ok "built"

# ---------------------------------------------------------------------------------------------
step "up"
compose up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; die "podman-compose up"; }
CONTAINER="$(podman ps -q --filter "label=io.podman.compose.project=$PROJECT" | head -1)"
[ -n "$CONTAINER" ] || { cat "$WORK/up.log"; die "no container of project $PROJECT running"; }

# No systemd here to schedule podman's health checks: run them as the timer would, until a
# fresh one passes. The check is the compose file's own (`warren healthcheck`).
wait_healthy() {
    local deadline=$(($(date +%s) + 30)) status=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if podman healthcheck run "$CONTAINER" >/dev/null 2>&1; then
            status=$(podman inspect "$CONTAINER" --format '{{.State.Health.Status}}' 2>/dev/null || true)
            [ "$status" = healthy ] && return 0
        fi
        sleep 0.5
    done
    die "container not healthy within 30 s (status: $status)"
}
wait_healthy
health=$(podman inspect "$CONTAINER" --format '{{json .Config.Healthcheck.Test}}')
[[ $health == *'/usr/local/bin/warren'*'healthcheck'* ]] || die "healthcheck is $health"
ok "healthy (compose healthcheck: $health)"
restart=$(podman inspect "$CONTAINER" --format '{{.HostConfig.RestartPolicy.Name}}')
[ "$restart" = unless-stopped ] || die "restart policy is '$restart'"
ok "restart policy unless-stopped"

info=$(client info) || die "pika cannot connect on published port $PORT as $USER_NAME"
[[ $info == *'"warren_version": "'[0-9]* ]] || die "not Warren: $info"
ok "pika connects on 127.0.0.1:$PORT (published 5672) as $USER_NAME (WARREN_DEFAULT_USER/PASS)"
client queue-exists --queue compose-from-definitions || die "definitions not loaded"
ok "queue from the mounted definitions file exists"

code=$(curl -s -o "$WORK/overview.json" -w '%{http_code}' -u "$USER_NAME:$USER_PASS" \
    "http://127.0.0.1:$WARREN_HOST_MANAGEMENT_PORT/api/overview") || true
[ "$code" = 200 ] || die "management API: GET /api/overview answered $code"
grep -q '"management_version"\|"rabbitmq_version"\|"product_name"' "$WORK/overview.json" \
    || die "management API: /api/overview is $(head -c 300 "$WORK/overview.json")"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WARREN_HOST_MANAGEMENT_PORT/api/overview") || true
[ "$code" = 401 ] || die "management API without credentials answered $code, expected 401"
ok "management API on $WARREN_HOST_MANAGEMENT_PORT (published 15672): 200 with credentials, 401 without"
curl -sf "http://127.0.0.1:$WARREN_HOST_PROMETHEUS_PORT/metrics" >"$WORK/metrics.txt" \
    || die "metrics: no answer on $WARREN_HOST_PROMETHEUS_PORT/metrics"
grep -q '^# TYPE' "$WORK/metrics.txt" || die "metrics: not Prometheus text"
ok "Prometheus metrics on $WARREN_HOST_PROMETHEUS_PORT (published 15692)"

# ---------------------------------------------------------------------------------------------
step "persistent messages survive down (volume kept) + up"
client publish --queue compose-durable --count 300 || die "publish"
compose down -t 30 >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; die "podman-compose down"; }
[ -z "$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")" ] \
    || die "containers left after down"
podman volume inspect "${PROJECT}_warren-data" >/dev/null 2>&1 \
    || die "named volume ${PROJECT}_warren-data gone after down without -v"
ok "down: container removed, named volume ${PROJECT}_warren-data kept"
compose up -d --no-build >"$WORK/up2.log" 2>&1 || { cat "$WORK/up2.log"; die "podman-compose up (again)"; }
CONTAINER="$(podman ps -q --filter "label=io.podman.compose.project=$PROJECT" | head -1)"
[ -n "$CONTAINER" ] || die "no container after the second up"
wait_healthy
client verify --queue compose-durable --count 300 --consume || die "after down + up"
ok "all 300 persistent messages there, in order, in a new container on the same volume"

step "down -v removes the volume"
compose down -v -t 30 >"$WORK/down2.log" 2>&1 || { cat "$WORK/down2.log"; die "podman-compose down -v"; }
CONTAINER=""
if podman volume inspect "${PROJECT}_warren-data" >/dev/null 2>&1; then
    die "volume still there after down -v"
fi
ok "volume removed"

# ---------------------------------------------------------------------------------------------
# compose.monitoring.yaml for real, when this host has a prometheus binary to make an image of
# (Debian's prometheus package; no registry here for prom/prometheus).
step "compose.monitoring.yaml: Prometheus scrapes warren:15692 on the compose network"
if [ -x "$PROMETHEUS_BIN" ]; then
    mkdir -p "$WORK/prom"
    cp "$PROMETHEUS_BIN" "$WORK/prom/prometheus"
    cat >"$WORK/prom/Containerfile" <<'EOP'
FROM localhost/warren-base:bookworm
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus && chown 65534:65534 /prometheus
USER 65534
ENTRYPOINT ["/bin/prometheus"]
EOP
    podman build --network host --format docker --layers=false -t "$PROM_IMAGE" \
        -f "$WORK/prom/Containerfile" "$WORK/prom" >"$WORK/prom-build.log" 2>&1 \
        || { tail -20 "$WORK/prom-build.log"; die "prometheus image build"; }
    export PROMETHEUS_IMAGE="$PROM_IMAGE" PROMETHEUS_HOST_PORT=$((PORT + 4))
    PROJECT="$PROJECT-mon"
    # podman-compose waits for `service_healthy` with podman's health status, which nothing
    # updates without systemd: run the checks meanwhile, as wait_healthy does.
    ( for _ in $(seq 120); do
        for c in $(podman ps -q --filter "label=io.podman.compose.project=$PROJECT" \
            --filter "label=io.podman.compose.service=warren"); do
            podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
        sleep 0.5
    done ) &
    HEALTH_PID=$!
    timeout 120 podman-compose --podman-run-args "$RUN_ARGS" -p "$PROJECT" \
        -f docker/compose.yaml -f "$WORK/override.yaml" -f docker/compose.monitoring.yaml \
        up -d --no-build >"$WORK/up-mon.log" 2>&1 || { cat "$WORK/up-mon.log"; die "up with monitoring"; }
    prom_url="http://127.0.0.1:$PROMETHEUS_HOST_PORT"
    health=""
    for _ in $(seq 60); do
        health=$(curl -s "$prom_url/api/v1/targets" | python3 -c '
import json, sys
try:
    t = json.load(sys.stdin)["data"]["activeTargets"]
except Exception:
    sys.exit(0)
print(" ".join("%s=%s" % (x["labels"].get("job"), x["health"]) for x in t))' 2>/dev/null || true)
        [ "$health" = "warren=up" ] && break
        sleep 1
    done
    [ "$health" = "warren=up" ] || { cat "$WORK/up-mon.log"; die "Prometheus target: '$health', expected warren=up"; }
    kill "$HEALTH_PID" 2>/dev/null || true
    ok "Prometheus ($PROM_IMAGE, Debian's $("$PROMETHEUS_BIN" --version 2>&1 | awk 'NR==1 {print $3}')) target warren:15692 is up"
    # The scraped value, not only the target's health: one queue (from the definitions file).
    queues=$(curl -s "$prom_url/api/v1/query" --data-urlencode 'query=rabbitmq_queues{job="warren"}' \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")')
    [ "$queues" = 1 ] || die "Prometheus: rabbitmq_queues{job=\"warren\"} is $queues, expected 1"
    ok "Prometheus has scraped rabbitmq_queues{job=\"warren\"} = 1 (the definitions file's queue)"
    podman-compose -p "$PROJECT" -f docker/compose.yaml -f "$WORK/override.yaml" \
        -f docker/compose.monitoring.yaml down -v -t 10 >/dev/null 2>&1 || die "down (monitoring)"
else
    skip "no prometheus binary at $PROMETHEUS_BIN (apt-get install prometheus) to run it"
fi

step "done in $(($(date +%s) - STARTED)) s"
