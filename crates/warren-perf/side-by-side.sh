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
#
# Topology (metadata) scenarios: topology1 / topology16 declare 10,000 durable queues, each
# bound to amq.direct, one operation at a time per client (1 or 16 client connections), then
# delete them the same way (`warren-perf topology`; DURATION does not apply). They run in each
# round like the others.
#
# Restart scenario `restart` (not in the default list: it is long): RESTART_QUEUES durable
# queues (default 100,000) with RESTART_BINDINGS bindings each (default 2, so 200,000
# bindings to amq.direct) are declared by RESTART_CLIENTS connections (default 16), then
#   - Warren (self-started only, it has --data-dir): kill -9, start the binary again on the
#     same data dir, and time until a passive declare of the last queue succeeds;
#   - RabbitMQ (self-started only): `rabbitmqctl stop` (timed on its own), start the node
#     again, and time until the same passive declare succeeds (await_startup is implied: the
#     probe retries the connection every 20 ms until the node accepts it and knows the queue).
#     RabbitMQ is stopped politely rather than killed: a kill -9 leaves its message store
#     dirty, and the recovery it then runs is not what "restart with N queues" asks about.
# Run once (round 1 only); afterwards both brokers are restarted empty for the scenarios that
# follow. With brokers given as URIs it is skipped (no way to restart
# them). The manual equivalent against any Warren:
#   warren --port 5690 --data-dir D &                          # fresh D
#   warren-perf topology --uri U --queues 100000 --clients 16 --bindings 2 --keep-queues -u perf-restart
#   kill -9 %1; warren --port 5690 --data-dir D &
#   warren-perf topology --uri U --await-queue perf-restart-15-6249   # prints the seconds
# Warren today rewrites its whole definitions.json on every durable change, so filling
# 100,000 queues takes hours to days; set RESTART_QUEUES lower to time a restart today, or
# RESTART_BROKERS=rabbitmq for RabbitMQ alone (default "warren rabbitmq").
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-$ROOT/target/release/warren-perf}
WARREN_BIN=${WARREN_BIN:-$ROOT/target/release/warren}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
DRAIN=${DRAIN:-10} # seconds without progress before undelivered messages count as missing
OUT_DOC=${OUT_DOC:-$ROOT/docs/PERFORMANCE.md}
SCENARIOS=${SCENARIOS:-"autoack ack publish_only persistent_confirms fanout10 topic1000 large1mib rtt fixed10k drain16 drain1k_ack topology1 topology16 memory"}
RESTART_QUEUES=${RESTART_QUEUES:-100000}
RESTART_BINDINGS=${RESTART_BINDINGS:-2}
RESTART_CLIENTS=${RESTART_CLIENTS:-16}
RESTART_BROKERS=${RESTART_BROKERS:-"warren rabbitmq"}
WORK=$(mktemp -d /tmp/side-by-side.XXXXXX)
chmod 755 "$WORK" # the RabbitMQ node runs as user rabbitmq
RESULTS=$WORK/results.tsv
MEMORY=$WORK/memory.tsv
RESTART=$WORK/restart.tsv
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$MEMORY"
: >"$RESTART"
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

start_warren() { # [keep [nowait]]: reuse the data dir; return without waiting for the port
  [ "${1:-}" = keep ] || rm -rf "$WARREN_DATA"
  mkdir -p "$WARREN_DATA"
  WARREN_LOG_LEVEL=warn "$WARREN_BIN" --port "$WARREN_PORT" --data-dir "$WARREN_DATA" >>"$WORK/warren.log" 2>&1 &
  WARREN_PID=$!
  [ "${2:-}" = nowait ] && return 0
  for _ in $(seq 100); do port_free "$WARREN_PORT" || return 0; sleep 0.1; done
  log "warren did not start"; return 1
}
stop_warren() { [ -n "${WARREN_PID:-}" ] && kill "$WARREN_PID" 2>/dev/null && wait "$WARREN_PID" 2>/dev/null; WARREN_PID=; }

rmq_env() {
  env RABBITMQ_NODENAME=$RMQ_NODE RABBITMQ_NODE_PORT="$RMQ_PORT" RABBITMQ_DIST_PORT=$((RMQ_PORT + 20006)) \
    RABBITMQ_MNESIA_BASE="$RMQ_BASE/mnesia" RABBITMQ_LOG_BASE="$RMQ_BASE/log" \
    RABBITMQ_PID_FILE="$RMQ_BASE/pid" RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_BASE/enabled_plugins" "$@"
}
start_rabbit() { # [keep [nowait]]: reuse the node's data; return once the node is launched
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server) >>"$WORK/apt.log" 2>&1 \
      || { note "RabbitMQ could not be installed (apt-get failed, see apt.log)"; return 1; }
    # The package starts a default node on 5672; this script uses its own node.
  fi
  if [ "${1:-}" != keep ]; then
    rm -rf "$RMQ_BASE"
    mkdir -p "$RMQ_BASE"
    : >"$RMQ_BASE/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$RMQ_BASE" 2>/dev/null || true
  fi
  # Start the node as user rabbitmq without going through su/PAM, which would cut the open
  # files limit to 1024: RabbitMQ then stops accepting AMQP connections at about 850.
  (
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq rmq_env setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
      /usr/lib/rabbitmq/bin/rabbitmq-server -detached
  ) >>"$WORK/rabbit-start.log" 2>&1
  [ "${2:-}" = nowait ] && return 0
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
    topology1) echo "topology --queues 10000 --clients 1 --bind -u perf-topo1" ;;
    topology16) echo "topology --queues 10000 --clients 16 --bind -u perf-topo16" ;;
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

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }

restart_round() { # broker uri
  local broker=$1 uri=$2 c=$RESTART_CLIENTS n=$RESTART_QUEUES b=$RESTART_BINDINGS
  local prefix=perf-restart last t0 fill_s stop_s restart_s fill probe rss
  # The last queue of the last client (client 0's when there are fewer queues than clients).
  if [ "$n" -ge "$c" ]; then last=$prefix-$((c - 1))-$((n / c - 1)); else last=$prefix-0-0; fi
  log "restart $broker: declaring $n durable queues with $b bindings each ($c clients)"
  fill=$WORK/restart-fill-$broker.json
  t0=$(now)
  "$PERF" topology --uri "$uri" --json --queues "$n" --clients "$c" --bindings "$b" --keep-queues -u $prefix \
    >"$fill" 2>>"$WORK/perf-errors.log" || { note "restart ($broker): filling failed"; return; }
  fill_s=$(since "$t0")
  # Stop, then start without waiting: the probe retries the connection every 20 ms itself.
  if [ "$broker" = warren ]; then
    kill -9 "$WARREN_PID"; wait "$WARREN_PID" 2>/dev/null
    stop_s=0
    t0=$(now)
    start_warren keep nowait
  else
    t0=$(now)
    rmq_env rabbitmqctl -n $RMQ_NODE stop "$RMQ_BASE/pid" >/dev/null 2>&1 # waits for the process
    stop_s=$(since "$t0")
    t0=$(now)
    start_rabbit keep nowait
  fi
  probe=$("$PERF" topology --uri "$uri" --json --await-queue "$last" --await-timeout 3600 2>>"$WORK/perf-errors.log" | tail -1)
  restart_s=$(since "$t0")
  if [ "$broker" = warren ]; then
    rss=$(rss_kib "$WARREN_PID")
  else
    rmq_env rabbitmqctl -n $RMQ_NODE await_startup --timeout 60 >/dev/null 2>&1
    RABBIT_PID=$(cat "$RMQ_BASE/pid" 2>/dev/null)
    rss=$(rss_kib "$RABBIT_PID")
  fi
  [ -n "$probe" ] || { note "restart ($broker): $last not visible within an hour of the restart"; return; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$broker" "$n" "$((n * b))" "$fill_s" "$stop_s" "$restart_s" "$rss" \
    "$(tail -1 "$fill")" >>"$RESTART"
  log "restart $broker: fill $fill_s s, stop $stop_s s, start until $last is visible $restart_s s, RSS $rss KiB"
}

for sc in $SCENARIOS; do
  for round in $(seq "$ROUNDS"); do
    if [ "$sc" = restart ]; then
      [ "$round" = 1 ] || continue
      case " $RESTART_BROKERS " in *" warren "*)
        if [ "$OWN_WARREN" = 1 ]; then restart_round warren "$WARREN_URI"; else note "restart: Warren not self-started, skipped"; fi ;;
      esac
      case " $RESTART_BROKERS " in *" rabbitmq "*)
        if [ "$OWN_RABBIT" = 1 ]; then restart_round rabbitmq "$RABBIT_URI"; elif [ -n "$RABBIT_URI" ]; then note "restart: RabbitMQ not self-started, skipped"; fi ;;
      esac
      # Later scenarios start from empty brokers again.
      [ "$OWN_WARREN" = 1 ] && { stop_warren; start_warren; }
      [ "$OWN_RABBIT" = 1 ] && { stop_rabbit; start_rabbit || RABBIT_URI=; }
      continue
    fi
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
export RESULTS MEMORY RESTART NOTES OUT_DOC DURATION ROUNDS DRAIN WARREN_VERSION RABBIT_VERSION ERLANG_VERSION
export GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 "$ROOT/crates/warren-perf/report.py"
log "wrote $OUT_DOC (raw results in $WORK)"
