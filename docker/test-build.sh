#!/usr/bin/env bash
# docker/test-build.sh: the user's build path. Builds docker/Dockerfile from source (its default
# `source` stage: cargo build --release inside the Rust image) and checks the image it makes.
# Then runs a container of it: healthy, pika, management, metrics, clean stop.
# Manual, not run by .ci/run (it compiles the broker from scratch: tens of minutes on a loaded
# 2-core machine). Run as root from anywhere:
#
#   docker/test-build.sh
#
# No registry image is pulled. The Rust image is made here, once, as localhost/warren-rust:bookworm:
# the debootstrapped Debian base of docker/test.sh (localhost/warren-base:bookworm, from
# $WARREN_BASE_DIR, default /var/tmp/warren-base), plus gcc and libc6-dev from Debian's archive,
# plus this host's Rust toolchain (rustc, cargo and the standard library; no docs) copied from
# $WARREN_RUST_TOOLCHAIN (default: the toolchain `rustc` runs here). The source build then
# fetches crates from crates.io (reached through the host network).
#
# Environment:
#   WARREN_RUST_IMAGE       use this Rust image instead of making one (e.g. rust:1-bookworm
#                           where a registry is reachable).
#   WARREN_RUST_TOOLCHAIN   toolchain directory to copy (holds bin/rustc, bin/cargo, lib/).
#   WARREN_EXTRA_CA_DIR     CA certificates (*.crt) added to the Rust image's trust store, for a
#                           build behind a TLS-inspecting proxy (default: this host's locally
#                           added ones, /usr/local/share/ca-certificates; "" for none).
#   WARREN_BUILD_JOBS       CARGO_BUILD_JOBS inside the build (default 1).
#   WARREN_CHECK_IMAGE      only run the checks, on this image (built already, e.g. by
#                           `podman-compose -f docker/compose.yaml build`); it is kept.
#   WARREN_TEST_PORT        first of three host ports for the container (default 21030).
#   WARREN_TEST_KEEP=1      keep the built image localhost/warren:source (and the Rust image).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

BASE_IMAGE="localhost/warren-base:bookworm"
BASE_DIR="${WARREN_BASE_DIR:-/var/tmp/warren-base}"
RUST_IMAGE="${WARREN_RUST_IMAGE:-localhost/warren-rust:bookworm}"
IMAGE="${WARREN_CHECK_IMAGE:-localhost/warren:source}"
NAME="warren-build-test-$$"
PORT="${WARREN_TEST_PORT:-21030}"
JOBS="${WARREN_BUILD_JOBS:-1}"
STARTED=$(date +%s)
WORK="$(mktemp -d /tmp/warren-docker-build.XXXXXX)"

step() { printf '\n== [%4d s] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
ok() { printf 'ok   %s\n' "$*"; }
die() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

NOFILE="$(ulimit -Hn)"
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ]; then NOFILE=65536; fi
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=4096:4096")
eng() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }

cleanup() {
    set +e
    eng rm -f -v -t 0 "$NAME" >/dev/null 2>&1
    if [ "${WARREN_TEST_KEEP:-0}" != 1 ] && [ -z "${WARREN_CHECK_IMAGE:-}" ]; then
        eng rmi "$IMAGE" >/dev/null 2>&1
        [ -z "${WARREN_RUST_IMAGE:-}" ] && eng rmi "$RUST_IMAGE" >/dev/null 2>&1
    fi
    # The build's intermediate state (the source stage with target/) is not kept: --layers=false.
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v podman >/dev/null || die "podman is not installed"

if [ -n "${WARREN_CHECK_IMAGE:-}" ]; then
    eng image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE"
elif [ -z "${WARREN_RUST_IMAGE:-}" ] && ! eng image inspect "$RUST_IMAGE" >/dev/null 2>&1; then
    step "Rust image $RUST_IMAGE"
    if ! eng image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        if [ ! -x "$BASE_DIR/bin/sh" ]; then
            command -v debootstrap >/dev/null || die "debootstrap is not installed"
            rm -rf "$BASE_DIR.tmp"
            debootstrap --variant=minbase bookworm "$BASE_DIR.tmp" http://deb.debian.org/debian \
                >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
            mv "$BASE_DIR.tmp" "$BASE_DIR"
        fi
        tar -C "$BASE_DIR" -c . | eng import - "$BASE_IMAGE" >/dev/null
    fi
    TOOLCHAIN="${WARREN_RUST_TOOLCHAIN:-$(rustc --print sysroot)}"
    TOOLCHAIN="$(readlink -f "$TOOLCHAIN")"
    [ -x "$TOOLCHAIN/bin/rustc" ] && [ -x "$TOOLCHAIN/bin/cargo" ] \
        || die "no rustc and cargo in $TOOLCHAIN/bin (set WARREN_RUST_TOOLCHAIN)"
    # As the official rust image: CARGO_HOME=/usr/local/cargo, the tools on PATH.
    cat >"$WORK/Containerfile" <<'EOS'
FROM localhost/warren-base:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN if ls /extra-ca/*.crt >/dev/null 2>&1; then \
        cp /extra-ca/*.crt /usr/local/share/ca-certificates/ && update-ca-certificates; fi
RUN mkdir -p /usr/local/rust /usr/local/cargo \
 && cp -a /toolchain/bin /toolchain/lib /usr/local/rust/
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN rustc --version && cargo --version
EOS
    CA_DIR="${WARREN_EXTRA_CA_DIR-/usr/local/share/ca-certificates}"
    [ -n "$CA_DIR" ] && [ -d "$CA_DIR" ] || CA_DIR="$WORK/no-ca"
    mkdir -p "$CA_DIR"
    eng build --network host "${ULIMITS[@]}" --format docker --layers=false \
        -v "$TOOLCHAIN:/toolchain:ro" -v "$CA_DIR:/extra-ca:ro" -t "$RUST_IMAGE" -f "$WORK/Containerfile" "$WORK" \
        >"$WORK/rust-image.log" 2>&1 || { tail -30 "$WORK/rust-image.log"; die "Rust image build"; }
    ok "$(eng run --rm "${ULIMITS[@]}" "$RUST_IMAGE" rustc --version) ($(eng image inspect "$RUST_IMAGE" --format '{{.Size}}' | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
fi

if [ -z "${WARREN_CHECK_IMAGE:-}" ]; then
    step "docker/Dockerfile from source (RUST_IMAGE=$RUST_IMAGE, BUILD_JOBS=$JOBS)"
    t0=$(date +%s)
    # --layers=false: no cached intermediate images left (the source stage holds target/).
    # BINARY_FROM=source is the Dockerfile's default, but podman 4.3 (buildah 1.28) decides which
    # stages to build from the build arguments given, not from ARG defaults: without it, it skips
    # the `source` stage and then looks for an image called "source".
    eng build -f docker/Dockerfile --build-arg BINARY_FROM=source --build-arg "RUST_IMAGE=$RUST_IMAGE" --build-arg "BUILD_JOBS=$JOBS" \
        --network host "${ULIMITS[@]}" --format docker --layers=false -t "$IMAGE" . \
        >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "source build"; }
    build_s=$(($(date +%s) - t0))
    grep -E 'Finished|Compiling warren-server' "$WORK/build.log" | tail -2 || true
    size=$(eng image inspect "$IMAGE" --format '{{.Size}}')
    ok "built in ${build_s} s: $IMAGE $(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }') ($size bytes)"
fi

step "the image runs"
version=$(eng run --rm "${ULIMITS[@]}" "$IMAGE" --version) || die "warren --version in the image"
[[ $version == warren* ]] || die "unexpected --version: $version"
ok "$version"
user=$(eng image inspect "$IMAGE" --format '{{.Config.User}}')
[ "$user" = "10001:10001" ] || die "image user is '$user'"
ok "user 10001:10001"

step "a container of it serves pika and stops cleanly"
# Host network, WARREN_TEST_PORT and the next two for AMQP, management and metrics. The full
# behavioural checks (config file, TLS, restart, kill -9, ...) are docker/test.sh's.
python3 -c 'import pika' 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
eng run -d --name "$NAME" --network host "${ULIMITS[@]}" \
    -e WARREN_PORT="$PORT" -e WARREN_MANAGEMENT_PORT=$((PORT + 1)) \
    -e WARREN_PROMETHEUS_PORT=$((PORT + 2)) \
    -e WARREN_DEFAULT_USER=app -e WARREN_DEFAULT_PASS=build-test-pw "$IMAGE" >/dev/null \
    || die "run"
healthy=""
for _ in $(seq 60); do
    if eng healthcheck run "$NAME" >/dev/null 2>&1; then healthy=1; break; fi
    sleep 0.5
done
[ -n "$healthy" ] || die "container not healthy within 30 s"
ok "healthy (the image's HEALTHCHECK)"
client() { timeout 120 python3 "$ROOT/docker/clients.py" "$1" --port "$PORT" \
    --user app --password build-test-pw "${@:2}"; }
info=$(client info) || die "pika cannot connect on $PORT"
[[ $info == *'"warren_version": "'[0-9]* ]] || die "not Warren: $info"
client publish --queue build-durable --count 100 || die "publish"
client verify --queue build-durable --count 100 --consume || die "verify"
ok "pika: 100 persistent messages published with confirms and consumed in order"
code=$(curl -s -o /dev/null -w '%{http_code}' -u app:build-test-pw \
    "http://127.0.0.1:$((PORT + 1))/api/overview") || true
[ "$code" = 200 ] || die "management API: GET /api/overview answered $code"
curl -sf -o "$WORK/metrics.txt" "http://127.0.0.1:$((PORT + 2))/metrics" \
    && grep -q '^# TYPE' "$WORK/metrics.txt" || die "no metrics"
ok "management API and metrics answer"
eng stop -t 30 "$NAME" >/dev/null 2>&1
exit_code=$(eng inspect "$NAME" --format '{{.State.ExitCode}}')
[ "$exit_code" = 0 ] || die "exit code $exit_code after stop"
ok "stop: exit 0"
step "done in $(($(date +%s) - STARTED)) s"
