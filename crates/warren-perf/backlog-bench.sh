#!/usr/bin/env bash
# Transient backlog benchmark (issue 17, "bounded memory for every queue"): one producer
# publishes MESSAGES 16 B transient messages (warren-perf's minimum body: its 24-byte stamp)
# into one non-durable queue with no consumer attached, then one consumer drains it
# (manual acks, prefetch 1000, one multiple-ack per 100; AUTOACK=1 for no-ack). Reports the
# publish and drain rates, the verification (every message once, in order) and the broker's
# peak RSS (VmHWM). Warren runs on a fresh data dir with its defaults; with RABBITMQ_PID set,
# the same run goes against the RabbitMQ at RABBITMQ_URI and reads that pid's VmHWM.
#
#   cargo build --release -p warren-server -p warren-perf
#   crates/warren-perf/backlog-bench.sh                       # MESSAGES=10000000
#   RABBITMQ_PID=$(pgrep -f beam.smp) crates/warren-perf/backlog-bench.sh rabbitmq
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-$ROOT/target/release/warren-perf}
WARREN_BIN=${WARREN_BIN:-$ROOT/target/release/warren}
MESSAGES=${MESSAGES:-10000000}
TIME=${TIME:-300}
PORT=${PORT:-5690}
RABBITMQ_URI=${RABBITMQ_URI:-amqp://guest:guest@127.0.0.1:5673/%2f}
log() { echo "[$(date +%T)] $*" >&2; }
[ -x "$PERF" ] && [ -x "$WARREN_BIN" ] || { log "build first: cargo build --release -p warren-server -p warren-perf"; exit 1; }

mode="-q 1000 -A 100"
[ "${AUTOACK:-0}" = 1 ] && mode="-a -q 1000"
WORK=$(mktemp -d /tmp/backlog-bench.XXXXXX)
if [ "${1:-warren}" = rabbitmq ]; then
  pid=${RABBITMQ_PID:?set RABBITMQ_PID to the beam.smp pid}
  uri=$RABBITMQ_URI
else
  "$WARREN_BIN" --data-dir "$WORK/data" --port "$PORT" --management-port 0 --prometheus-port 0 \
    >"$WORK/warren.log" 2>&1 &
  pid=$!
  sleep 1
  uri="amqp://guest:guest@127.0.0.1:$PORT/%2f"
fi
log "broker pid $pid, $MESSAGES messages, mode: $mode"
"$PERF" drain --uri "$uri" -x 1 -y 1 -s 16 $mode -C "$MESSAGES" -z "$TIME" --drain 60 2>&1 |
  grep -E "^sent|^drained|verification"
echo "peak RSS (VmHWM): $(awk '/VmHWM/ {print $2, $3}' "/proc/$pid/status")"
[ "${1:-warren}" = rabbitmq ] || kill "$pid"
rm -rf "$WORK"
