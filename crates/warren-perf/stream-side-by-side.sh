#!/usr/bin/env bash
# Stream benchmarks (issue 16), Warren against RabbitMQ 3.10.8, both over AMQP 0-9-1 with
# warren-perf. Writes raw results to $WORK/results.tsv and prints a summary (medians) at the end;
# the figures in docs/PERFORMANCE.md ("Streams") come from it.
#
#   cargo build --release -p warren-server -p warren-perf
#   RABBITMQ_NODE_PORT=5673 RABBITMQ_DIST_PORT=25673 rabbitmq-server -detached   # as root
#   crates/warren-perf/stream-side-by-side.sh
#
# Warren is started by the script (release binary, its own --data-dir under $WORK, port
# WARREN_PORT, management and Prometheus off). RabbitMQ is the node already running on
# RMQ_PORT (its pid is asked of rabbitmqctl); the restart step stops it with `rabbitmqctl stop`
# and starts it again with RMQ_START. Steps (STEPS, in this order), Warren and RabbitMQ
# alternating in each round:
#   publish  1 producer, confirms (at most CONFIRM outstanding), no consumer, PUB_TIME s into a
#            fresh stream, 16 B (24 B body: warren-perf's stamp) and 1 KiB; ROUNDS rounds
#   fill     COUNT 1 KiB messages into the stream perf-stream-big (confirmed msg/s; once)
#   replay   1 consumer replays all COUNT from `first` (prefetch QOS, ack every ACK_EVERY);
#            REPLAY_ROUNDS rounds
#   multi    MULTI consumers replay from `first` at once, MULTI_COUNT each; the broker's RSS
#            (VmRSS) is sampled every 0.1 s: growth = peak - before; ROUNDS rounds
#   attach   1 consumer at x-stream-offset=COUNT/2 (prefetch 10), time from basic.consume to
#            the first delivery; ATTACH_REPEAT times per round, ROUNDS rounds
#   restart  Warren: kill -9, start on the same data dir; RabbitMQ: rabbitmqctl stop, start.
#            Times from the start command until a passive declare of the stream succeeds and
#            until a consumer at the middle offset has its first message (once)
#   cleanup  deletes perf-stream-big on both
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-$ROOT/target/release/warren-perf}
WARREN_BIN=${WARREN_BIN:-$ROOT/target/release/warren}
WARREN_PORT=${WARREN_PORT:-5695}
RMQ_PORT=${RMQ_PORT:-5673}
RMQ_DIST_PORT=${RMQ_DIST_PORT:-25673}
RMQ_START=${RMQ_START:-"env RABBITMQ_NODE_PORT=$RMQ_PORT RABBITMQ_DIST_PORT=$RMQ_DIST_PORT rabbitmq-server -detached"}
STEPS=${STEPS:-"publish fill replay multi attach restart cleanup"}
BROKERS=${BROKERS:-"warren rabbitmq"}
ROUNDS=${ROUNDS:-3}
REPLAY_ROUNDS=${REPLAY_ROUNDS:-$ROUNDS}
PUB_TIME=${PUB_TIME:-10}
CONFIRM=${CONFIRM:-1000}
COUNT=${COUNT:-10000000}
QOS=${QOS:-1000}
ACK_EVERY=${ACK_EVERY:-100}
MULTI=${MULTI:-10}
MULTI_COUNT=${MULTI_COUNT:-1000000}
ATTACH_REPEAT=${ATTACH_REPEAT:-5}
BIG=perf-stream-big
WORK=${WORK:-$(mktemp -d /tmp/stream-sbs.XXXXXX)}
mkdir -p "$WORK"
RESULTS=$WORK/results.tsv
touch "$RESULTS"
WARREN_DATA=$WORK/warren-data
WARREN_URI=amqp://guest:guest@127.0.0.1:$WARREN_PORT/%2f
RABBIT_URI=amqp://guest:guest@127.0.0.1:$RMQ_PORT/%2f
log() { echo "[$(date +%T)] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }
load1() { cut -d' ' -f1 /proc/loadavg; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
port_up() { ss -ltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }

start_warren() { # [keep]: reuse the data dir
  [ "${1:-}" = keep ] || rm -rf "$WARREN_DATA"
  mkdir -p "$WARREN_DATA"
  WARREN_LOG_LEVEL=${WARREN_LOG_LEVEL:-warn} "$WARREN_BIN" --port "$WARREN_PORT" --data-dir "$WARREN_DATA" \
    --management-port 0 --prometheus-port 0 >>"$WORK/warren.log" 2>&1 &
  WARREN_PID=$!
}
wait_port() { for _ in $(seq 200); do port_up "$1" && return 0; sleep 0.05; done; return 1; }
rabbit_pid() { rabbitmqctl eval 'os:getpid().' 2>/dev/null | tr -d '"'; }

uri_of() { [ "$1" = warren ] && echo "$WARREN_URI" || echo "$RABBIT_URI"; }
pid_of() { [ "$1" = warren ] && echo "$WARREN_PID" || echo "$RABBIT_PID"; }
perf() { "$PERF" --json "$@" 2>>"$WORK/perf-errors.log" | tail -1; }
record() { # step broker round extra json
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(load1)" "$4" "$5" >>"$RESULTS"
  log "$1 $2 round $3 [$4]: $(echo "$5" | cut -c1-200)"
}
stream_args() { echo "-f persistent --queue-arg x-queue-type=stream"; }

# RSS sampler: writes the peak VmRSS (KiB) of $1 to $2 until $2.stop exists.
sample_rss() {
  local pid=$1 out=$2 peak=0 v
  while [ ! -e "$out.stop" ]; do
    v=$(rss_kib "$pid"); [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
    sleep 0.1
  done
  echo "$peak" >"$out"
}

step_publish() {
  local round b size
  for round in $(seq "$ROUNDS"); do
    for size in 16 1024; do
      for b in $BROKERS; do
        # shellcheck disable=SC2046
        record "publish$size" "$b" "$round" "" "$(perf --uri "$(uri_of "$b")" -x 1 -y 0 -s "$size" -c "$CONFIRM" \
          -z "$PUB_TIME" -u "perf-stream-pub$size" $(stream_args))"
      done
    done
  done
}

step_fill() {
  local b
  for b in $BROKERS; do
    # shellcheck disable=SC2046
    record fill "$b" 1 "count=$COUNT" "$(perf --uri "$(uri_of "$b")" -x 1 -y 0 -s 1024 -c "$CONFIRM" \
      -C "$COUNT" -z 7200 --keep-queues -u $BIG $(stream_args))"
    [ "$b" = warren ] && log "warren data: $(du -sh "$WARREN_DATA" | cut -f1)"
    [ "$b" = rabbitmq ] && log "rabbitmq data: $(du -sh /var/lib/rabbitmq/mnesia | cut -f1)"
  done
}

replay() { # broker consumers count offset qos
  perf replay --uri "$(uri_of "$1")" -u $BIG -y "$2" -C "$3" -q "$5" -A "$ACK_EVERY" \
    --consumer-arg "x-stream-offset=$4" -z 7200 --drain 60
}

step_replay() {
  local round b
  for round in $(seq "$REPLAY_ROUNDS"); do
    for b in $BROKERS; do
      record replay "$b" "$round" "" "$(replay "$b" 1 "$COUNT" first "$QOS")"
    done
  done
}

step_multi() {
  local round b pid before peak
  for round in $(seq "$ROUNDS"); do
    for b in $BROKERS; do
      pid=$(pid_of "$b")
      sleep 2
      before=$(rss_kib "$pid")
      rm -f "$WORK/rss.$b" "$WORK/rss.$b.stop"
      sample_rss "$pid" "$WORK/rss.$b" &
      local sp=$!
      local json
      json=$(replay "$b" "$MULTI" "$MULTI_COUNT" first "$QOS")
      touch "$WORK/rss.$b.stop"; wait $sp
      peak=$(cat "$WORK/rss.$b")
      record multi "$b" "$round" "rss_before_kib=$before rss_peak_kib=$peak growth_kib=$((peak - before))" "$json"
    done
  done
}

step_attach() {
  local round b i
  for round in $(seq "$ROUNDS"); do
    for b in $BROKERS; do
      for i in $(seq "$ATTACH_REPEAT"); do
        record attach "$b" "$round" "offset=$((COUNT / 2)) try=$i" "$(replay "$b" 1 1 $((COUNT / 2)) 10)"
      done
    done
  done
}

step_restart() {
  local b t0 visible first json
  for b in $BROKERS; do
    if [ "$b" = warren ]; then
      kill -9 "$WARREN_PID"; wait "$WARREN_PID" 2>/dev/null
      t0=$(now)
      start_warren keep
    else
      rabbitmqctl stop >/dev/null 2>&1
      while kill -0 "$RABBIT_PID" 2>/dev/null; do sleep 0.1; done
      t0=$(now)
      $RMQ_START >>"$WORK/rabbit-start.log" 2>&1
    fi
    perf topology --uri "$(uri_of "$b")" --await-queue $BIG --await-timeout 600 >/dev/null
    visible=$(since "$t0")
    # The first delivery from the middle of the stream (retried while the stream is not
    # readable yet).
    json=
    for _ in $(seq 600); do
      json=$(replay "$b" 1 1 $((COUNT / 2)) 10)
      [ -n "$json" ] && break
      sleep 0.05
    done
    first=$(since "$t0")
    [ "$b" = rabbitmq ] && RABBIT_PID=$(rabbit_pid)
    record restart "$b" 1 "visible_s=$visible first_delivery_s=$first rss_after_kib=$(rss_kib "$(pid_of "$b")")" "$json"
  done
}

step_cleanup() {
  local b
  for b in $BROKERS; do
    "$PERF" topology --uri "$(uri_of "$b")" --await-queue $BIG --await-timeout 5 >/dev/null 2>&1 || continue
    # Declared again as it is (a no-op) and deleted at the end of a run that sends nothing.
    # shellcheck disable=SC2046
    perf --uri "$(uri_of "$b")" -x 1 -y 0 -C 0 -z 5 -u $BIG $(stream_args) >/dev/null || log "could not delete $BIG on $b"
  done
  rm -rf "$WARREN_DATA"
}

[ -x "$PERF" ] && [ -x "$WARREN_BIN" ] || { log "build first: cargo build --release -p warren-server -p warren-perf"; exit 1; }
case " $BROKERS " in *" warren "*)
  if [ -z "${KEEP_WARREN_DATA:-}" ]; then start_warren; else start_warren keep; fi
  wait_port "$WARREN_PORT" || { log "warren did not start"; exit 1; } ;;
esac
RABBIT_PID=
case " $BROKERS " in *" rabbitmq "*)
  RABBIT_PID=$(rabbit_pid)
  [ -n "$RABBIT_PID" ] || { log "no RabbitMQ node answers rabbitmqctl (start it: $RMQ_START)"; exit 1; } ;;
esac
trap '[ -n "${WARREN_PID:-}" ] && kill "$WARREN_PID" 2>/dev/null' EXIT
log "warren $WARREN_URI pid ${WARREN_PID:-}, rabbitmq $RABBIT_URI pid $RABBIT_PID, work $WORK; $(uptime)"
for s in $STEPS; do
  log "step $s; $(uptime)"
  "step_$s"
done
log "done; $(uptime)"
python3 "$ROOT/crates/warren-perf/stream-report.py" "$RESULTS"
