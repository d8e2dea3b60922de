#!/usr/bin/env bash
# Policy benchmark on Warren (issue 15's "Cost" targets):
#   - a policy change over QUEUES queues: time from the PUT /api/policies request until every
#     queue reports the policy (GET /api/queues?columns=name,policy), for a set, a change of
#     its definition and a delete; REPEAT times each, median;
#   - publishing to a queue whose limits come from a policy vs one with the same limits as
#     declare arguments: 16 B autoack, 1 producer / 1 consumer, DURATION s, ROUNDS rounds
#     alternating.
#
#   cargo build --release -p warren-server -p warren-perf
#   crates/warren-perf/policy-bench.sh                 # QUEUES=10000 REPEAT=3 ROUNDS=3
#
# Prints tab-separated results; copy them to docs/PERFORMANCE.md with `uptime`'s load.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-$ROOT/target/release/warren-perf}
WARREN_BIN=${WARREN_BIN:-$ROOT/target/release/warren}
QUEUES=${QUEUES:-10000}
REPEAT=${REPEAT:-3}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WORK=$(mktemp -d /tmp/policy-bench.XXXXXX)
log() { echo "[$(date +%T)] $*" >&2; }
port_free() { ! ss -ltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }
free_port() { local p=$1; while ! port_free "$p"; do p=$((p + 1)); done; echo "$p"; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
now_ms() { date +%s%3N; }

[ -x "$PERF" ] && [ -x "$WARREN_BIN" ] || { log "build first: cargo build --release -p warren-server -p warren-perf"; exit 1; }
AMQP=$(free_port 5696)
HTTP=$(free_port 15696)
URI="amqp://guest:guest@127.0.0.1:$AMQP/%2f"
H="http://127.0.0.1:$HTTP"
mkdir -p "$WORK/data"
WARREN_LOG_LEVEL=warn "$WARREN_BIN" --bind 127.0.0.1 --port "$AMQP" --management-bind 127.0.0.1 \
  --management-port "$HTTP" --prometheus-port 0 --data-dir "$WORK/data" >>"$WORK/warren.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do port_free "$HTTP" || break; sleep 0.1; done

api() { curl -s -o /dev/null -w '%{http_code}' -u guest:guest -H 'content-type: application/json' "$@"; }
# How many queues report policy $1 ("" = none).
with_policy() {
  curl -s -u guest:guest "$H/api/queues?columns=name,policy" \
    | python3 -c 'import json,sys; p=sys.argv[1] or None; print(sum(1 for q in json.load(sys.stdin) if q.get("policy")==p))' "$1"
}
# ms from running "$@" until with_policy $want reaches QUEUES.
timed() {
  local want=$1; shift
  local t0 t1
  t0=$(now_ms)
  "$@" >/dev/null
  while [ "$(with_policy "$want")" -lt "$QUEUES" ]; do sleep 0.01; done
  t1=$(now_ms)
  echo $((t1 - t0))
}

echo "# uptime: $(uptime)"
log "declaring $QUEUES queues"
"$PERF" topology --uri "$URI" --queues "$QUEUES" --clients 16 --keep-queues -u pb >"$WORK/topology.log" 2>&1 \
  || { log "topology failed: $(tail -3 "$WORK/topology.log")"; exit 1; }
echo "# $QUEUES durable queues, release build"
echo -e "operation\tmin_ms\tmedian_ms\tmax_ms"
for op in set change delete; do
  : >"$WORK/t"
  for i in $(seq "$REPEAT"); do
    case $op in
      set) t=$(timed all api -X PUT "$H/api/policies/%2F/all" -d '{"pattern":"^pb","definition":{"max-length":1000000},"apply-to":"queues"}') ;;
      change) t=$(timed all api -X PUT "$H/api/policies/%2F/all" -d "{\"pattern\":\"^pb\",\"definition\":{\"max-length\":$((2000000 + i))},\"apply-to\":\"queues\"}") ;;
      delete) t=$(timed "" api -X DELETE "$H/api/policies/%2F/all") ;;
    esac
    echo "$t" >>"$WORK/t"
    # Put the state back for the next repetition.
    case $op in
      delete) [ "$i" -lt "$REPEAT" ] && timed all api -X PUT "$H/api/policies/%2F/all" -d '{"pattern":"^pb","definition":{"max-length":1000000},"apply-to":"queues"}' >/dev/null ;;
      set) [ "$i" -lt "$REPEAT" ] && timed "" api -X DELETE "$H/api/policies/%2F/all" >/dev/null ;;
    esac
  done
  echo -e "policy $op ($QUEUES queues)\t$(sort -n "$WORK/t" | head -1)\t$(median <"$WORK/t")\t$(sort -n "$WORK/t" | tail -1)"
done
api -X DELETE "$H/api/policies/%2F/all" >/dev/null

# Same limits two ways: declare arguments, or a policy.
api -X PUT "$H/api/queues/%2F/bench-args" \
  -d '{"durable":false,"arguments":{"x-max-length":1000000,"x-message-ttl":600000}}' >/dev/null
api -X PUT "$H/api/queues/%2F/bench-policy" -d '{"durable":false}' >/dev/null
api -X PUT "$H/api/policies/%2F/bench" \
  -d '{"pattern":"^bench-policy$","definition":{"max-length":1000000,"message-ttl":600000},"apply-to":"queues","priority":5}' >/dev/null
echo -e "round\tqueue\tautoack_msg_s"
for r in $(seq "$ROUNDS"); do
  for q in bench-args bench-policy; do
    rate=$("$PERF" --uri "$URI" --json -x 1 -y 1 -s 16 -a -z "$DURATION" -p -u "$q" 2>>"$WORK/perf.err" \
      | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["receive_rate"]))')
    echo -e "$r\t$q\t$rate"
  done
done
echo "# uptime: $(uptime)"
