#!/usr/bin/env bash
# TLS side by side: Warren's and RabbitMQ's TLS listeners, both already running.
#
#   WARREN_PID=.. RABBIT_PID=.. crates/warren-perf/tls-side-by-side.sh WARREN_AMQPS_URI RABBIT_AMQPS_URI
#
# RABBIT_PID is the beam.smp pid. Both listeners use test certificates: the client does not
# verify them (--tls-insecure). Scenarios, alternating the brokers, ROUNDS rounds each:
#   autoack   16 B, 1 producer / 1 consumer, autoack, DURATION s: received msg/s and broker
#             CPU per message
#   connect   CLIENTS tasks open a connection (TCP + full TLS handshake, no resumption +
#             AMQP handshake + channel.open) and close it, DURATION s: handshakes/s
#   resume    the same with TLS session resumption allowed
#   hold      HOLD_CONNS idle TLS connections: broker RSS growth per connection
# Prints one line per run (tab-separated) and the medians as a Markdown table.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-$ROOT/target/release/warren-perf}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-4}
HOLD_CONNS=${HOLD_CONNS:-1000}
SCENARIOS=${SCENARIOS:-"autoack connect resume hold"}
WURI=${1:?WARREN_AMQPS_URI}
RURI=${2:?RABBIT_AMQPS_URI}
WORK=$(mktemp -d /tmp/tls-side-by-side.XXXXXX)
RES=$WORK/results.tsv
: >"$RES"
log() { echo "[$(date +%T)] $*" >&2; }
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 0))" "$1" "$2"; }

run_one() { # scenario broker uri pid round
  local sc=$1 b=$2 uri=$3 pid=$4 r=$5 json value cpu c0 c1
  c0=$(ticks "$pid")
  case $sc in
    autoack) json=$("$PERF" --uri "$uri" --tls-insecure -x 1 -y 1 -s 16 -a -z "$DURATION" --json 2>/dev/null | tail -1)
             value=$(field "$json" receive_rate) ;;
    connect) json=$("$PERF" connect --uri "$uri" --tls-insecure --tls-no-resume --clients "$CLIENTS" -z "$DURATION" --json 2>/dev/null | tail -1)
             value=$(field "$json" handshake_rate) ;;
    resume)  json=$("$PERF" connect --uri "$uri" --tls-insecure --clients "$CLIENTS" -z "$DURATION" --json 2>/dev/null | tail -1)
             value=$(field "$json" handshake_rate) ;;
    hold)    local before after fifo=$WORK/hold.$b.$r
             sleep 2; before=$(rss_kib "$pid")
             mkfifo "$fifo"
             "$PERF" hold --uri "$uri" --tls-insecure --connections "$HOLD_CONNS" --hold 12 >"$fifo" 2>/dev/null &
             local hp=$!
             read -r _ <"$fifo" # "ready N connections ..."
             sleep 8; after=$(rss_kib "$pid")
             wait "$hp"; rm -f "$fifo"
             value=$(( (after - before) * 1024 / HOLD_CONNS ))
             json="{\"rss_before_kib\":$before,\"rss_after_kib\":$after}" ;;
  esac
  c1=$(ticks "$pid")
  cpu=$((c1 - c0))
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$b" "$r" "$value" "$cpu" "$json" >>"$RES"
  log "$sc $b round $r: $value (broker cpu ${cpu} ticks) load $(cut -d' ' -f1 /proc/loadavg)"
}

for sc in $SCENARIOS; do
  for r in $(seq 1 "$ROUNDS"); do
    run_one "$sc" warren "$WURI" "${WARREN_PID:-0}" "$r"
    run_one "$sc" rabbitmq "$RURI" "${RABBIT_PID:-0}" "$r"
  done
done

python3 - "$RES" <<'PY'
import json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
units = {"autoack": "msg/s received", "connect": "full handshakes/s", "resume": "handshakes/s (resumption)", "hold": "bytes RSS per idle connection"}
print("| scenario | Warren (median) | RabbitMQ (median) | Warren / RabbitMQ | runs (Warren; RabbitMQ) |")
print("|---|---|---|---|---|")
for sc in dict.fromkeys(r[0] for r in rows):
    v = {b: [float(r[3]) for r in rows if r[0] == sc and r[1] == b] for b in ("warren", "rabbitmq")}
    if not v["warren"] or not v["rabbitmq"]:
        continue
    w, q = statistics.median(v["warren"]), statistics.median(v["rabbitmq"])
    fmt = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)
    print(f"| {sc} ({units.get(sc, '')}) | {w:,.0f} | {q:,.0f} | {w / q if q else 0:.2f}x | {fmt(v['warren'])}; {fmt(v['rabbitmq'])} |")
PY
echo "raw results: $RES" >&2
