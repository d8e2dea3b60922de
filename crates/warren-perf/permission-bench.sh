#!/usr/bin/env bash
# The cost of permission checks: the same broker, the same runs, as `guest` (all `.*`) and as
# a user whose write regex is not `.*`, alternating, ROUNDS rounds each.
#
#   BROKER_PID=.. crates/warren-perf/permission-bench.sh GUEST_URI USER_URI
#
# Scenarios: autoack (16 B, 1 producer / 1 consumer, autoack) and publish (16 B, 1 producer,
# no consumer; the queue is purged by deleting it after each run). Reports received (autoack)
# or sent (publish) msg/s and the broker's CPU time per message, as medians, and the user's
# figure over guest's.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-$ROOT/target/release/warren-perf}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-10}
SCENARIOS=${SCENARIOS:-"autoack publish"}
GURI=${1:?GUEST_URI}
UURI=${2:?USER_URI}
PID=${BROKER_PID:?BROKER_PID}
RES=$(mktemp /tmp/permission-bench.XXXXXX)
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 0))" "$1" "$2"; }
for sc in $SCENARIOS; do
  for r in $(seq 1 "$ROUNDS"); do
    for who in guest user; do
      uri=$GURI; [ "$who" = user ] && uri=$UURI
      c0=$(ticks "$PID")
      case $sc in
        autoack) json=$("$PERF" --uri "$uri" -x 1 -y 1 -s 16 -a -z "$DURATION" -u perf.q --json 2>/dev/null | tail -1)
                 rate=$(field "$json" receive_rate); msgs=$(field "$json" received_total) ;;
        publish) json=$("$PERF" --uri "$uri" -x 1 -y 0 -s 16 -z "$DURATION" -u perf.q --json 2>/dev/null | tail -1)
                 rate=$(field "$json" send_rate); msgs=$(field "$json" sent) ;;
      esac
      c1=$(ticks "$PID")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$who" "$r" "$rate" "$((c1 - c0))" "$msgs" >>"$RES"
      echo "[$(date +%T)] $sc $who round $r: $rate msg/s, $((c1 - c0)) ticks, $msgs msgs, load $(cut -d' ' -f1 /proc/loadavg)" >&2
    done
  done
done
python3 - "$RES" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1])]
print("| scenario | guest msg/s (median) | user msg/s (median) | user / guest | guest broker CPU us/msg | user broker CPU us/msg | user / guest |")
print("|---|---|---|---|---|---|---|")
for sc in dict.fromkeys(r[0] for r in rows):
    def col(who, f):
        return [f(r) for r in rows if r[0] == sc and r[1] == who]
    rate = {w: statistics.median(col(w, lambda r: float(r[3]))) for w in ("guest", "user")}
    cpu = {w: statistics.median(col(w, lambda r: float(r[4]) * 1e4 / max(float(r[5]), 1))) for w in ("guest", "user")}
    print(f"| {sc} | {rate['guest']:,.0f} | {rate['user']:,.0f} | {rate['user'] / rate['guest']:.3f} | {cpu['guest']:.3f} | {cpu['user']:.3f} | {cpu['user'] / cpu['guest']:.3f} |")
PY
echo "raw results: $RES" >&2
