#!/usr/bin/env bash
# Management API benchmark on Warren with many queues (issue 14's targets):
#   - time to the last byte of the big lists (GET /api/queues whole and paginated, exchanges,
#     bindings, connections, /metrics/per-object), REQUESTS requests each, median;
#   - broker RSS with QUEUES idle queues, with the management listener on (rates sampled) and
#     off (MEMORY=1 runs both);
#   - AMQP autoack (16 B, 1 producer / 1 consumer, DURATION s) with a client polling
#     GET /api/queues every second vs no polling, ROUNDS rounds alternating (POLL=1).
#
#   cargo build --release -p warren-server -p warren-perf
#   crates/warren-perf/mgmt-bench.sh                  # QUEUES=10000 REQUESTS=7 ROUNDS=3
#
# Prints tab-separated results; copy them to docs/PERFORMANCE.md with `uptime`'s load.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-$ROOT/target/release/warren-perf}
WARREN_BIN=${WARREN_BIN:-$ROOT/target/release/warren}
QUEUES=${QUEUES:-10000}
CONNECTIONS=${CONNECTIONS:-1000}
REQUESTS=${REQUESTS:-7}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
MEMORY=${MEMORY:-1}
POLL=${POLL:-1}
WORK=$(mktemp -d /tmp/mgmt-bench.XXXXXX)
log() { echo "[$(date +%T)] $*" >&2; }
port_free() { ! ss -ltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }
free_port() { local p=$1; while ! port_free "$p"; do p=$((p + 1)); done; echo "$p"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }

[ -x "$PERF" ] && [ -x "$WARREN_BIN" ] || { log "build first: cargo build --release -p warren-server -p warren-perf"; exit 1; }
AMQP=$(free_port 5690)
HTTP=$(free_port 15690)
PROM=$(free_port 15790)
URI="amqp://guest:guest@127.0.0.1:$AMQP/%2f"
PID=

start() { # MGMT_PORT
  rm -rf "$WORK/data"
  mkdir -p "$WORK/data"
  WARREN_LOG_LEVEL=warn "$WARREN_BIN" --bind 127.0.0.1 --port "$AMQP" --management-bind 127.0.0.1 \
    --management-port "$1" --prometheus-bind 127.0.0.1 --prometheus-port "$PROM" \
    --data-dir "$WORK/data" >>"$WORK/warren.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do port_free "$AMQP" || return 0; sleep 0.1; done
  log "warren did not start"; exit 1
}
stop() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=; }
trap 'stop; rm -rf "$WORK"' EXIT

declare_queues() {
  log "declaring $QUEUES queues"
  "$PERF" topology --uri "$URI" --queues "$QUEUES" --clients 16 --keep-queues -u perf-mgmt >"$WORK/topology.log" 2>&1 \
    || { log "topology failed: $(tail -3 "$WORK/topology.log")"; exit 1; }
}

# ms to the last byte, REQUESTS times; prints "min median max bytes"
time_get() {
  local url=$1 t bytes
  : >"$WORK/times"
  for _ in $(seq "$REQUESTS"); do
    read -r t bytes < <(curl -s -o /dev/null -u guest:guest -w '%{time_total} %{size_download}\n' "$url")
    awk -v t="$t" 'BEGIN {printf "%.1f\n", t * 1000}' >>"$WORK/times"
  done
  echo "$(sort -n "$WORK/times" | head -1) $(median <"$WORK/times") $(sort -n "$WORK/times" | tail -1) $bytes"
}

echo "# uptime: $(uptime)"
echo "# $QUEUES durable queues (warren-perf topology --clients 16 --keep-queues), release build"

if [ "$MEMORY" = 1 ]; then
  start 0
  base=$(rss_kib "$PID")
  declare_queues
  sleep 12
  off=$(rss_kib "$PID")
  stop
  start "$HTTP"
  base_on=$(rss_kib "$PID")
  declare_queues
  sleep 12 # two rate samples (collect_statistics_interval 5 s)
  on_idle=$(rss_kib "$PID")
  curl -s -o /dev/null -u guest:guest "http://127.0.0.1:$HTTP/api/queues"
  sleep 1
  on_listed=$(rss_kib "$PID")
  echo -e "rss_kib\tmanagement_off_empty\t$base\tmanagement_off_${QUEUES}q\t$off"
  echo -e "rss_kib\tmanagement_on_empty\t$base_on\tmanagement_on_${QUEUES}q\t$on_idle\tafter_one_list\t$on_listed"
else
  start "$HTTP"
  declare_queues
  sleep 6
fi

H="http://127.0.0.1:$HTTP"
echo -e "request\tmin_ms\tmedian_ms\tmax_ms\tbytes"
for path in "/api/queues" "/api/queues?page=1&page_size=100" "/api/queues?page=1&page_size=100&sort=messages" \
  "/api/queues?disable_stats=true&enable_queue_totals=true" "/api/queues?columns=name,messages" \
  "/api/exchanges" "/api/bindings" "/api/overview"; do
  echo -e "$path\t$(time_get "$H$path" | tr ' ' '\t')"
done
echo -e "/metrics/per-object\t$(time_get "http://127.0.0.1:$PROM/metrics/per-object" | tr ' ' '\t')"

if [ "$CONNECTIONS" -gt 0 ]; then
  "$PERF" hold --uri "$URI" --connections "$CONNECTIONS" --hold 60 >"$WORK/hold.log" 2>&1 &
  HOLD=$!
  for _ in $(seq 120); do
    n=$(curl -s -u guest:guest "$H/api/overview" | python3 -c 'import json,sys; print(json.load(sys.stdin)["object_totals"]["connections"])' 2>/dev/null)
    [ "${n:-0}" -ge "$CONNECTIONS" ] && break
    sleep 0.5
  done
  echo -e "/api/connections ($n)\t$(time_get "$H/api/connections" | tr ' ' '\t')"
  kill "$HOLD" 2>/dev/null; wait "$HOLD" 2>/dev/null
fi

if [ "$POLL" = 1 ]; then
  echo -e "round\tpolling\tautoack_msg_s"
  for r in $(seq "$ROUNDS"); do
    for poll in 0 1; do
      POLLER=
      if [ "$poll" = 1 ]; then
        (while true; do curl -s -o /dev/null -u guest:guest "$H/api/queues"; sleep 1; done) &
        POLLER=$!
      fi
      rate=$("$PERF" --uri "$URI" --json -x 1 -y 1 -s 16 -a -z "$DURATION" -u perf-autoack 2>>"$WORK/perf.err" \
        | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["receive_rate"]))')
      [ -n "$POLLER" ] && kill "$POLLER" 2>/dev/null && wait "$POLLER" 2>/dev/null
      echo -e "$r\t$poll\t$rate"
    done
  done
fi
echo "# uptime: $(uptime)"
