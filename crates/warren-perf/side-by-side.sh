#!/usr/bin/env bash
# Side-by-side benchmark of Warren and RabbitMQ with warren-perf.
#
#   crates/warren-perf/side-by-side.sh                      # starts both brokers itself
#   crates/warren-perf/side-by-side.sh WARREN_URI RABBIT_URI  # uses running brokers
#
# With URIs, set WARREN_PID / RABBIT_PID (the beam.smp pid) to get broker CPU and memory;
# without them those columns are left empty and the memory scenarios are skipped.
# Scenarios alternate Warren and RabbitMQ, ROUNDS rounds each, DURATION seconds per run; the
# medians and Warren/RabbitMQ ratios are written to docs/PERFORMANCE.md (OUT_DOC).
# Needs: a release build (cargo build --release -p warren-server -p warren-perf), python3,
# and for the self-started RabbitMQ, root (apt-get install rabbitmq-server when missing).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-$ROOT/target/release/warren-perf}
WARREN_BIN=${WARREN_BIN:-$ROOT/target/release/warren}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
DRAIN=${DRAIN:-10} # seconds without progress before undelivered messages count as missing
OUT_DOC=${OUT_DOC:-$ROOT/docs/PERFORMANCE.md}
SCENARIOS=${SCENARIOS:-"autoack ack publish_only persistent_confirms fanout10 topic1000 large1mib rtt fixed10k drain16 drain1k_ack memory"}
WORK=$(mktemp -d /tmp/side-by-side.XXXXXX)
chmod 755 "$WORK" # the RabbitMQ node runs as user rabbitmq
RESULTS=$WORK/results.tsv
MEMORY=$WORK/memory.tsv
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$MEMORY"
: >"$NOTES"
log() { echo "[$(date +%T)] $*" >&2; }
note() { echo "$*" >>"$NOTES"; log "NOTE: $*"; }

port_free() { ! ss -ltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }
free_port() { local p=$1; while ! port_free "$p"; do p=$((p + 1)); done; echo "$p"; }
cpu_ticks() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" || echo ""; }
rss_kib() { [ -n "${1:-}" ] && awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo ""; }

# ---------------------------------------------------------------- brokers
OWN_WARREN=0
OWN_RABBIT=0
WARREN_DATA=$WORK/warren-data
RMQ_BASE=$WORK/rabbitmq
RMQ_NODE=warrenperf@localhost

start_warren() {
  rm -rf "$WARREN_DATA"
  mkdir -p "$WARREN_DATA"
  WARREN_LOG_LEVEL=warn "$WARREN_BIN" --port "$WARREN_PORT" --data-dir "$WARREN_DATA" >>"$WORK/warren.log" 2>&1 &
  WARREN_PID=$!
  for _ in $(seq 100); do port_free "$WARREN_PORT" || return 0; sleep 0.1; done
  log "warren did not start"; return 1
}
stop_warren() { [ -n "${WARREN_PID:-}" ] && kill "$WARREN_PID" 2>/dev/null && wait "$WARREN_PID" 2>/dev/null; WARREN_PID=; }

rmq_env() {
  env RABBITMQ_NODENAME=$RMQ_NODE RABBITMQ_NODE_PORT="$RMQ_PORT" RABBITMQ_DIST_PORT=$((RMQ_PORT + 20006)) \
    RABBITMQ_MNESIA_BASE="$RMQ_BASE/mnesia" RABBITMQ_LOG_BASE="$RMQ_BASE/log" \
    RABBITMQ_PID_FILE="$RMQ_BASE/pid" RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_BASE/enabled_plugins" "$@"
}
start_rabbit() {
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server) >>"$WORK/apt.log" 2>&1 \
      || { note "RabbitMQ could not be installed (apt-get failed, see apt.log)"; return 1; }
    # The package starts a default node on 5672; this script uses its own node.
  fi
  rm -rf "$RMQ_BASE"
  mkdir -p "$RMQ_BASE"
  : >"$RMQ_BASE/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$RMQ_BASE" 2>/dev/null || true
  # Start the node as user rabbitmq without going through su/PAM, which would cut the open
  # files limit to 1024: RabbitMQ then stops accepting AMQP connections at about 850.
  (
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq rmq_env setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
      /usr/lib/rabbitmq/bin/rabbitmq-server -detached
  ) >>"$WORK/rabbit-start.log" 2>&1
  for _ in $(seq 30); do
    if rmq_env rabbitmqctl -n $RMQ_NODE await_startup --timeout 5 >/dev/null 2>&1; then
      RABBIT_PID=$(cat "$RMQ_BASE/pid" 2>/dev/null)
      return 0
    fi
    sleep 1
  done
  note "RabbitMQ did not start (see $RMQ_BASE/log)"; return 1
}
stop_rabbit() {
  [ "$OWN_RABBIT" = 1 ] || return 0
  rmq_env rabbitmqctl -n $RMQ_NODE stop >/dev/null 2>&1
  RABBIT_PID=
}
cleanup() { [ "$OWN_WARREN" = 1 ] && stop_warren; stop_rabbit; }
trap cleanup EXIT

if [ $# -ge 2 ]; then
  WARREN_URI=$1
  RABBIT_URI=$2
  WARREN_PID=${WARREN_PID:-}
  RABBIT_PID=${RABBIT_PID:-}
else
  [ -x "$PERF" ] && [ -x "$WARREN_BIN" ] || { log "build first: cargo build --release -p warren-server -p warren-perf"; exit 1; }
  WARREN_PORT=$(free_port "${WARREN_PORT:-5680}")
  RMQ_PORT=$(free_port "${RMQ_PORT:-5673}")
  start_warren && OWN_WARREN=1
  WARREN_URI=amqp://guest:guest@127.0.0.1:$WARREN_PORT/%2f
  if start_rabbit; then OWN_RABBIT=1; RABBIT_URI=amqp://guest:guest@127.0.0.1:$RMQ_PORT/%2f; else RABBIT_URI=; fi
fi
log "warren: $WARREN_URI (pid ${WARREN_PID:-?}); rabbitmq: ${RABBIT_URI:-none} (pid ${RABBIT_PID:-?})"

# ---------------------------------------------------------------- scenarios
args_for() {
  case $1 in
    autoack) echo "-x 1 -y 1 -s 16 -a" ;;
    ack) echo "-x 1 -y 1 -s 16 -A 100 -q 1000" ;;
    publish_only) echo "-x 1 -y 0 -s 16" ;;
    persistent_confirms) echo "-x 1 -y 1 -s 1024 -f persistent -c 1000 -A 100 -q 1000 -u perf-durable" ;;
    fanout10) echo "-x 1 -y 10 -s 16 -a -e perf-fanout -t fanout --queues 10" ;;
    topic1000) echo "-x 1 -y 1 -s 16 -a -e perf-topic -t topic --bindings 1000" ;;
    large1mib) echo "-x 1 -y 1 -s 1048576 -a" ;;
    rtt) echo "rtt -s 16" ;;
    fixed10k) echo "-x 1 -y 1 -s 16 -a -r 10000" ;;
    drain16) echo "drain -x 1 -y 1 -s 16 -a -q 1000 -C 1000000" ;;
    drain1k_ack) echo "drain -x 1 -y 1 -s 1024 -q 1000 -A 100 -C 200000" ;;
  esac
}

run_one() { # scenario broker round uri pid
  local sc=$1 broker=$2 round=$3 uri=$4 pid=$5 load c0 c1 json
  load=$(cut -d' ' -f1 /proc/loadavg)
  c0=$(cpu_ticks "$pid")
  # shellcheck disable=SC2046
  json=$("$PERF" --uri "$uri" --json -z "$DURATION" --drain "$DRAIN" $(args_for "$sc") 2>>"$WORK/perf-errors.log" | tail -1)
  c1=$(cpu_ticks "$pid")
  local cpu=""
  [ -n "$c0" ] && [ -n "$c1" ] && cpu=$((c1 - c0))
  [ -n "$json" ] || { json="{}"; echo "$sc $broker round $round failed" >>"$WORK/perf-errors.log"; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$broker" "$round" "$load" "$cpu" "$json" >>"$RESULTS"
  log "$sc $broker round $round: $(echo "$json" | cut -c1-160)"
}

memory_round() { # broker round uri pid
  local broker=$1 round=$2 uri=$3 pid=$4 base idle full hold_out
  [ -n "$pid" ] || { note "memory ($broker): no broker pid, skipped"; return; }
  sleep 3
  base=$(rss_kib "$pid")
  hold_out=$WORK/hold-$broker-$round.out
  "$PERF" hold --uri "$uri" --connections 1000 --hold 8 >"$hold_out" 2>&1 &
  local hp=$!
  for _ in $(seq 600); do grep -q '^ready' "$hold_out" && break; kill -0 $hp 2>/dev/null || break; sleep 0.1; done
  sleep 3
  idle=$(rss_kib "$pid")
  grep -q '^ready' "$hold_out" || { note "memory ($broker): 1000 connections failed: $(tail -1 "$hold_out")"; idle=; }
  wait $hp
  sleep 2
  local before_fill
  before_fill=$(rss_kib "$pid")
  "$PERF" --uri "$uri" --json -x 1 -y 0 -s 16 -C 1000000 -c 1000 -z 600 --keep-queues -u perf-1m >"$WORK/fill-$broker-$round.json" 2>>"$WORK/perf-errors.log"
  sleep 3
  full=$(rss_kib "$pid")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$broker" "$round" "$base" "$idle" "$before_fill" "$full" >>"$MEMORY"
  log "memory $broker round $round: base $base KiB, 1000 idle conns $idle KiB, 1M msgs $full KiB (before fill $before_fill)"
}

for sc in $SCENARIOS; do
  for round in $(seq "$ROUNDS"); do
    if [ "$sc" = memory ]; then
      [ "$OWN_WARREN" = 1 ] && { stop_warren; start_warren; }
      memory_round warren "$round" "$WARREN_URI" "${WARREN_PID:-}"
      if [ -n "$RABBIT_URI" ]; then
        [ "$OWN_RABBIT" = 1 ] && { stop_rabbit; start_rabbit || continue; }
        memory_round rabbitmq "$round" "$RABBIT_URI" "${RABBIT_PID:-}"
      fi
      continue
    fi
    run_one "$sc" warren "$round" "$WARREN_URI" "${WARREN_PID:-}"
    [ -n "$RABBIT_URI" ] && run_one "$sc" rabbitmq "$round" "$RABBIT_URI" "${RABBIT_PID:-}"
  done
done

# ---------------------------------------------------------------- report
WARREN_VERSION=$("$WARREN_BIN" --version 2>/dev/null || echo "warren (unknown)")
RABBIT_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)
ERLANG_VERSION=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo unknown)
export RESULTS MEMORY NOTES OUT_DOC DURATION ROUNDS DRAIN WARREN_VERSION RABBIT_VERSION ERLANG_VERSION
export GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 "$ROOT/crates/warren-perf/report.py"
log "wrote $OUT_DOC (raw results in $WORK)"
